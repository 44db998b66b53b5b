#!/bin/sh
# Installs the config.toml the stack rendered into a runner's config volume, run by the one-shot
# "config sync" container (components/docker_runner.py) whenever the rendered file changes.
#
# config.toml has two owners. The stack owns every setting; the runner owns its credentials (id,
# token, token_obtained_at, token_expires_at), because it rotates its own token before it expires and
# writes the new one back. So for each runner:
#   - the stack's token is the one it delivered last time (its hash is in .gitlab-runners-tokens):
#     the credentials already in config.toml are kept, rotated or not;
#   - the stack brings a token it has not delivered before (a new runner, or a rotation by the stack):
#     the runner's own `register` verifies it with GitLab (POST /api/v4/runners/verify, with the
#     runner's system id) and writes the credentials as the runner itself does, token_expires_at
#     included, which is what makes the runner rotate it in time.
# The result is checked with the runner's own `verify` before it replaces the file: a config.toml
# GitLab would refuse (a revoked token, a wrong CA) is never installed.
# The file is replaced in one rename; the running runner notices the change and reloads it. Nothing
# here prints a token, and the staged copy is removed from this container when the script ends.
# A failure ends with one "config sync: …" line naming GitLab's answer, which `pulumi up` repeats; exit
# code 3 says GitLab refuses the stack's token of a runner whose own token this volume does not hold
# (removed by hand with the volume, after the runner had rotated it): only a new token helps.
#
# Needs only a POSIX shell, awk, sha256sum and mktemp (busybox on alpine, coreutils on ubuntu).
set -eu
umask 077

staged="${STAGED_CONFIG:-/gitlab-runners/config.toml}"
dir="${CONFIG_DIR:-/etc/gitlab-runner}"
runner="${GITLAB_RUNNER:-gitlab-runner}"
conf="$dir/config.toml"
seeds="$dir/.gitlab-runners-tokens"
work="$(mktemp -d)"
trap 'rm -rf "$work"; rm -f "$staged"' EXIT

fail() { echo "config sync: $*" >&2; exit 1; }
mask() { sed 's/glrt-[A-Za-z0-9_.-]*/glrt-[MASKED]/g'; }
# GitLab's answer in a runner's log, from the status it names (status=502, status 502,
# status="502 Bad Gateway"); the runner has retried 408, 429 and 5xx answers before it gives up.
answer_in() {
  code="$(sed -n 's/.*status[ =("]*\([1-5][0-9][0-9]\).*/\1/p' "$1" | tail -n 1)"
  case "$code" in
    "") echo "no answer from GitLab over HTTP (connection, DNS or TLS: see the runner's log above)" ;;
    401) echo "GitLab answered 401 Unauthorized" ;;
    403) echo "GitLab answered 403 Forbidden" ;;
    404) echo "GitLab answered 404 Not Found" ;;
    429) echo "GitLab answered 429 Too Many Requests (after the runner's retries)" ;;
    500) echo "GitLab answered 500 Internal Server Error (after the runner's retries)" ;;
    502) echo "GitLab answered 502 Bad Gateway (after the runner's retries)" ;;
    503) echo "GitLab answered 503 Service Unavailable (after the runner's retries)" ;;
    504) echo "GitLab answered 504 Gateway Timeout (after the runner's retries)" ;;
    *) echo "GitLab answered $code" ;;
  esac
}
[ -s "$staged" ] || fail "no staged config at $staged"
mkdir -p "$dir"
touch "$seeds"
# A private CA for GitLab goes where the runner looks for it (<config dir>/certs/<host>.crt).
if [ -d "$(dirname "$staged")/certs" ]; then
  mkdir -p "$dir/certs"
  cp "$(dirname "$staged")"/certs/*.crt "$dir/certs/"
  chmod 0644 "$dir"/certs/*.crt
fi

# Fields of each [[runners]] table's own part (not its subtables), as "name<TAB>key = value" lines,
# whatever the order of the keys (the runner writes `name` first, a map encoder sorts them).
runner_lines() {
  awk -v want="$2" '
    function flush(   i) {
      for (i = 1; i <= count; i++) if (name != "") print name "\t" kept[i]
      count = 0; name = ""
    }
    /^[[:space:]]*\[\[runners\]\][[:space:]]*$/ { flush(); inside = 1; next }
    /^[[:space:]]*\[/ { flush(); inside = 0; next }
    inside && /^[[:space:]]*name[[:space:]]*=/ {
      name = $0; sub(/^[^=]*=[[:space:]]*"/, "", name); sub(/"[[:space:]]*$/, "", name); next
    }
    inside && /=/ {
      line = $0; sub(/^[[:space:]]+/, "", line)
      field = line; sub(/[[:space:]]*=.*$/, "", field)
      if (want == "" || index(" " want " ", " " field " ")) kept[++count] = line
    }
    END { flush() }
  ' "$1"
}
unquote() { sed 's/^[^=]*=[[:space:]]*"//; s/"[[:space:]]*$//'; }

credentials="$work/credentials"
: > "$credentials"
: > "$work/seeds"
runner_lines "$staged" "url token tls-ca-file" | sort > "$work/staged-fields"
for name in $(cut -f1 "$work/staged-fields" | sort -u); do
  token="$(grep "^$name	token[[:space:]]*=" "$work/staged-fields" | cut -f2 | unquote)"
  url="$(grep "^$name	url[[:space:]]*=" "$work/staged-fields" | cut -f2 | unquote)"
  ca_file="$(grep "^$name	tls-ca-file[[:space:]]*=" "$work/staged-fields" | cut -f2 | unquote)"
  [ -n "$token" ] && [ -n "$url" ] || fail "runner $name has no url or token in the staged config"
  hash="$(printf '%s' "$token" | sha256sum | cut -c1-64)"
  echo "$name $hash" >> "$work/seeds"
  if grep -qx "$name $hash" "$seeds" && [ -f "$conf" ] \
    && runner_lines "$conf" "token" | grep -q "^$name	"; then
    # Delivered before: whatever the runner holds now is current.
    runner_lines "$conf" "id token token_obtained_at token_expires_at" | grep "^$name	" >> "$credentials"
    continue
  fi
  # A token the runner has not seen: verify it the runner's own way, with the runner's system id.
  reg="$work/register-$name"
  mkdir -p "$reg"
  [ -f "$dir/.runner_system_id" ] && cp "$dir/.runner_system_id" "$reg/.runner_system_id"
  if ! CI_SERVER_TOKEN="$token" CI_SERVER_TLS_CA_FILE="$ca_file" "$runner" register --non-interactive \
    --config "$reg/config.toml" --url "$url" --name "$name" --executor shell > "$reg/log" 2>&1; then
    mask < "$reg/log" >&2
    answer="$(answer_in "$reg/log")"
    if [ "$answer" = "GitLab answered 403 Forbidden" ] && [ ! -s "$conf" ]; then
      echo "config sync: GitLab refuses the stack's token of runner $name (403 Forbidden) and this config volume is new, holding no token of the runner's own: if the runner had rotated its token itself, the current one went with the volume. Nothing was changed. Give the runner a new token through the stack: create a new runner in GitLab and set runnerTokens.$name to its token (or raise the runner's tokenGeneration), then run pulumi up" >&2
      exit 3
    fi
    fail "the check of runner $name's token at $url failed: $answer; nothing was changed"
  fi
  [ -f "$dir/.runner_system_id" ] || cp "$reg/.runner_system_id" "$dir/.runner_system_id"
  runner_lines "$reg/config.toml" "id token token_obtained_at token_expires_at" \
    | sed "s/^[^	]*	/$name	/" >> "$credentials"
done

# The staged file with each runner's credential lines replaced by the ones chosen above.
awk -v creds="$credentials" '
  BEGIN {
    while ((getline line < creds) > 0) {
      tab = index(line, "\t"); name = substr(line, 1, tab - 1)
      lines[name] = lines[name] substr(line, tab + 1) "\n"
    }
  }
  /^[[:space:]]*\[\[runners\]\][[:space:]]*$/ { inside = 1; name = ""; print; next }
  /^[[:space:]]*\[/ { inside = 0; print; next }
  inside && /^[[:space:]]*name[[:space:]]*=/ {
    name = $0; sub(/^[^=]*=[[:space:]]*"/, "", name); sub(/"[[:space:]]*$/, "", name); print; next
  }
  inside && /^[[:space:]]*(id|token|token_obtained_at|token_expires_at)[[:space:]]*=/ {
    if (name in lines) {
      if ($0 ~ /^[[:space:]]*token[[:space:]]*=/) printf "%s", lines[name]
      next
    }
  }
  { print }
' "$staged" > "$work/config.toml"

[ -s "$work/config.toml" ] || fail "the merged config is empty"
# The runner's own check that GitLab accepts every runner of the new file, as the runner will reach
# it (TLS with the CA above, the runner's system id): a file that would not work is not installed.
[ -f "$dir/.runner_system_id" ] && cp "$dir/.runner_system_id" "$work/.runner_system_id"
if ! "$runner" verify --config "$work/config.toml" > "$work/verify.log" 2>&1; then
  mask < "$work/verify.log" >&2
  fail "the check of the new config.toml failed: $(answer_in "$work/verify.log"); nothing was changed"
fi
cp "$work/config.toml" "$dir/.config.toml.new"
mv "$dir/.config.toml.new" "$conf"
cp "$work/seeds" "$seeds"
echo "config sync: config.toml installed ($(grep -c '^\[\[runners\]\]' "$work/config.toml") runner(s))"
