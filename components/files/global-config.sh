#!/bin/bash
# extraGlobalConfig on Kubernetes: the chart's pre-entrypoint script (components/kubernetes_runner.py),
# which the chart's entrypoint runs after it registered the runner and before the runner starts.
#
# The chart renders config.toml's global part itself, from values that have no place for other keys,
# and `register --template-config` takes only the template's [[runners]] entry. So this replaces the
# global part of the registered config.toml (all before its first [[runners]] line) with the one
# runner_config.py rendered from the stack's settings: the chart's own keys with the values the chart
# was given, and the extra keys. The chart's [session_server] table (the web terminal, whose address
# the chart's scripts found at start) and the [[runners]] entries stay as the registration wrote them.
# Nothing here prints the file: it holds the runner's token.
set -eu
umask 077

config="${CONFIG_PATH_FOR_INIT%/}/config.toml"
next="$config.gitlab-runners"
grep -q '^\[\[runners\]\]' "$config" || { echo "extraGlobalConfig: no [[runners]] entry in $config" >&2; exit 1; }
{
  cat <<'GITLAB_RUNNERS_GLOBAL_TOML'
__GLOBAL_TOML__
GITLAB_RUNNERS_GLOBAL_TOML
  sed -n '/^\[session_server\]/,/^\[/{/^\[session_server\]/p;/^\[/!p;}' "$config"
  sed -n '/^\[\[runners\]\]/,$p' "$config"
} >"$next"
mv "$next" "$config"
echo "extraGlobalConfig: config.toml's global part replaced"
