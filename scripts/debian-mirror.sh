# The Debian mirror of this machine's apt sources: sourced by scripts/runner-base-image (and its tests),
# kept apart from lib.sh so that the toolchain's cache keys do not change with it.
# shellcheck shell=bash
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
