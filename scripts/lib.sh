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
