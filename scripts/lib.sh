# Shared helpers for scripts/*: sourced, not run.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOT
# Caches live outside the checkout so a fresh clone (CI) reuses them; see README "What the scripts
# install". Override with GITLAB_RUNNERS_CACHE.
CACHE="${GITLAB_RUNNERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gitlab-runners}"
export CACHE

say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# The pins a build depends on, as "NAME=value" lines: a cache key takes these, not all of versions.env,
# so changing one pin rebuilds only what uses it.
pins() {
  local name
  for name in "$@"; do printf '%s=%s\n' "$name" "${!name}"; done
}

# A short hash of the files given: the key of what is built from them.
cache_key() {
  cat "$@" | sha256sum | cut -c1-16
}

# A build cached under $CACHE/<kind>/<key>, the key a hash of the files given. Sets `dest` (the
# finished folder) and `work` (where to build it); succeeds when `dest` is already complete.
cache_slot() {
  local kind="$1"
  shift
  dest="$CACHE/$kind/$(cache_key "$@")"
  work="$dest.partial"
  [ -f "$dest/.complete" ]
}

# Publish `work` as `dest` in one step: an interrupted build is never taken for a finished one.
cache_commit() {
  rm -rf "$dest" && mv "$work" "$dest" && touch "$dest/.complete"
}

# Install Debian packages given as name=version (as root, with apt-get): the package lists are
# refreshed once per machine, and a pinned version missing from them is an error.
apt_install() {
  [ -n "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ] || apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 \
    || die "could not install $* (pinned in scripts/versions.env)"
}

# This machine's apt `deb` sources, in apt's reading order (sources.list, then sources.list.d/*.list
# and *.sources by name), one a line: URI, suites and components, tab-separated. Both formats: one-line
# entries and deb822 stanzas (their first URI; `Enabled: no` skipped). $1 is the apt directory.
apt_deb_sources() {
  local file
  for file in "$1/sources.list" "$1"/sources.list.d/*; do
    [ -f "$file" ] || continue
    case "$file" in
      *.sources)
        awk '
          function flush() {
            if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled !~ /^(no|false)$/ && uri != "")
              printf "%s\t%s\t%s\n", uri, suites, components
            types = uri = suites = components = enabled = ""
          }
          /^[ \t]*$/ { flush(); next }
          /^#/ || /^[ \t]/ { next }   # comments, continuation lines
          {
            key = tolower(substr($0, 1, index($0, ":") - 1))
            value = substr($0, index($0, ":") + 1)
            gsub(/^[ \t]+|[ \t]+$/, "", value)
            if (key == "types") types = value
            else if (key == "uris") { split(value, uris, /[ \t]+/); uri = uris[1] }
            else if (key == "suites") suites = value
            else if (key == "components") components = value
            else if (key == "enabled") enabled = tolower(value)
          }
          END { flush() }
        ' "$file"
        ;;
      */sources.list | *.list)
        # deb [options] uri suite [component...]; the options may hold spaces.
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$file" | awk '
          $1 == "deb" && NF >= 3 {
            components = ""
            for (i = 4; i <= NF; i++) components = components (i > 4 ? " " : "") $i
            printf "%s\t%s\t%s\n", $2, $3, components
          }'
        ;;
    esac
  done
}

# The Debian mirror to fetch Debian from: GITLAB_RUNNERS_DEBIAN_MIRROR when set, else the first Debian
# archive among this machine's apt sources (GITLAB_RUNNERS_APT_DIR, default /etc/apt): a source with
# the component `main` whose URI's path ends in /debian or that serves the suite $1 itself (not only
# its -security or -updates). Third-party repositories (Docker's, say: component `stable`) are skipped.
# Fails when there is none: no host name is ever assumed.
debian_mirror() {
  local suite="${1:-}" uri suites components
  if [ -n "${GITLAB_RUNNERS_DEBIAN_MIRROR:-}" ]; then
    printf '%s\n' "${GITLAB_RUNNERS_DEBIAN_MIRROR%/}"
    return 0
  fi
  while IFS=$'\t' read -r uri suites components; do
    uri="${uri%/}"
    [[ " $components " == *" main "* ]] || continue
    if [[ "$uri" == */debian ]] || { [ -n "$suite" ] && [[ " $suites " == *" $suite "* ]]; }; then
      printf '%s\n' "$uri"
      return 0
    fi
  done < <(apt_deb_sources "${GITLAB_RUNNERS_APT_DIR:-/etc/apt}")
  return 1
}

# Go, at the version the pinned modules need.
require_go() {
  command -v go >/dev/null || die "go is needed to build $1 (Go >= $GO_MIN_VERSION)"
  local version
  version="$(go env GOVERSION | sed 's/^go//')"
  [ "$(printf '%s\n%s\n' "$GO_MIN_VERSION" "$version" | sort -V | head -1)" = "$GO_MIN_VERSION" ] \
    || die "Go $version is older than $GO_MIN_VERSION"
}

# Download a Go module at an exact version and print its (read-only) directory; a refusal by the
# module proxy is printed, not swallowed.
module_dir() {
  local answer dir attempt
  for attempt in 1 2 3; do  # a registry hiccup is retried; a refusal stays a refusal
    answer="$(go mod download -json "$1@$2" 2>&1 || true)"
    dir="$(printf '%s\n' "$answer" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    [ -n "$dir" ] && break
    sleep "$attempt"
  done
  if [ -z "$dir" ]; then
    say "cannot download $1@$2: $(printf '%s\n' "$answer" | sed -n 's/^\t"Error": "\(.*\)"$/\1/p')"
    return 1
  fi
  echo "$dir"
}

# Copy a module directory to a writable place where its own go.mod applies as it is.
writable_copy() {
  mkdir -p "$(dirname "$2")" && rm -rf "$2" && cp -r "$1" "$2" && chmod -R u+w "$2"
}
