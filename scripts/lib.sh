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

# The offline engine settings: a local state backend is chosen per command, never Pulumi Cloud.
pulumi_offline_env() {
  export PULUMI_SKIP_UPDATE_CHECK=true
  export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
  export PULUMI_IGNORE_AMBIENT_PLUGINS=true
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
