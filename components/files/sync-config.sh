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
# Nothing goes live before the new file is checked, and the private CA (certs/*.crt) goes live only
# with the config.toml it was checked with: the running runner reloads a CA file as soon as its mtime
# changes. The check is this script's own: for every runner of the new file, POST
# /api/v4/runners/verify with its token and system id, to its url, trusting what the runner will trust
# (the system's roots and the staged CA; its client certificate if it has one), must answer 200. The
# runner's `verify` is not enough: it fails only on 403 (commands/verify.go and network/gitlab.go at
# v18.9.0), so a wrong CA, a wrong URL or a GitLab answering 5xx would pass it. The runner's `verify`
# then runs too, as the proof that the runner loads the new file. Only then are the CA and config.toml
# moved in, each in one rename; the running runner notices the change and reloads. Nothing here prints
# a token or passes one as an argument (request bodies are files, the runner's register takes it from
# its environment), and the staged copy is removed from this container when the script ends. A
# failure ends with one "config sync: ..." line naming each runner and GitLab's answer, which
# `pulumi up` repeats.
# Exit code 3 says GitLab refuses the stack's token of a runner whose own token this volume does not
# hold (removed by hand with the volume, after the runner had rotated it): only a new token helps.
#
# A runner whose automatic token rotation is off (FF_DISABLE_AUTOMATIC_TOKEN_ROTATION in its
# [runners.feature_flags]: a token other runner managers hold too) gets no token_expires_at, so the
# runner never schedules a reset for it: gitlab-runner 18.9.0's reset loop (commands/multi.go) ends for
# every runner of the process when it reaches a runner with the flag, and the others' tokens would then
# expire unrotated.
#
# Needs a POSIX shell, awk, sed, sha256sum, cmp, mktemp, sleep (busybox on alpine, coreutils on ubuntu), and
# curl or GNU wget for the check (the official images have curl; the ubuntu one wget too).
set -eu
umask 077

staged="${STAGED_CONFIG:-/gitlab-runners/config.toml}"
dir="${CONFIG_DIR:-/etc/gitlab-runner}"
runner="${GITLAB_RUNNER:-gitlab-runner}"
conf="$dir/config.toml"
seeds="$dir/.gitlab-runners-tokens"
staged_certs="$(dirname "$staged")/certs"
work="$(mktemp -d)"
trap 'rm -rf "$work"; rm -f "$staged" "$dir/.config.toml.new" "$dir"/certs/*.crt.new' EXIT

fail() { echo "config sync: $*" >&2; exit 1; }
mask() { sed 's/glrt-[A-Za-z0-9_.-]*/glrt-[MASKED]/g'; }
# GitLab's answer in a runner's log, from the status it names (status=502, status 502,
# status="502 Bad Gateway"); the runner has retried 408, 429 and 5xx answers before it gives up.
# An HTTP status with its reason phrase, as GitLab's answers name them.
status_named() {
  case "$1" in
    401) echo "401 Unauthorized" ;;
    403) echo "403 Forbidden" ;;
    404) echo "404 Not Found" ;;
    429) echo "429 Too Many Requests" ;;
    500) echo "500 Internal Server Error" ;;
    502) echo "502 Bad Gateway" ;;
    503) echo "503 Service Unavailable" ;;
    504) echo "504 Gateway Timeout" ;;
    *) echo "$1" ;;
  esac
}
answer_in() {
  code="$(sed -n 's/.*status[ =("]*\([1-5][0-9][0-9]\).*/\1/p' "$1" | tail -n 1)"
  # A glrt- token GitLab refuses is logged "is not valid", with no status (network/gitlab.go, 403).
  if [ -z "$code" ] && grep -q "Verifying runner\.\.\. is not valid" "$1"; then code=403; fi
  case "$code" in
    "") echo "no answer from GitLab over HTTP (connection, DNS or TLS: see the runner's log above)" ;;
    408 | 429 | 5??) echo "GitLab answered $(status_named "$code") (after the runner's retries)" ;;
    *) echo "GitLab answered $(status_named "$code")" ;;
  esac
}
[ -s "$staged" ] || fail "no staged config at $staged"
mkdir -p "$dir"
touch "$seeds"
# The private CA for GitLab and the runner's system id, staged here until the new file is checked.
mkdir -p "$work/certs"
if [ -d "$staged_certs" ]; then
  for ca in "$staged_certs"/*.crt; do
    if [ -f "$ca" ]; then cp "$ca" "$work/certs/"; fi
  done
fi
if [ -f "$dir/.runner_system_id" ]; then cp "$dir/.runner_system_id" "$work/.runner_system_id"; fi

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
# The names of the runners whose automatic token rotation is off, one a line.
rotation_off() {
  awk '
    /^[[:space:]]*\[\[runners\]\][[:space:]]*$/ { name = ""; flags = 0; inside = 1; next }
    /^[[:space:]]*\[runners\.feature_flags\][[:space:]]*$/ { flags = 1; inside = 0; next }
    /^[[:space:]]*\[/ { flags = 0; inside = 0; next }
    inside && /^[[:space:]]*name[[:space:]]*=/ {
      name = $0; sub(/^[^=]*=[[:space:]]*"/, "", name); sub(/"[[:space:]]*$/, "", name); next
    }
    flags && name != "" && /^[[:space:]]*"?FF_DISABLE_AUTOMATIC_TOKEN_ROTATION"?[[:space:]]*=[[:space:]]*true/ { print name }
  ' "$1"
}

field() { grep "^$1	$2[[:space:]]*=" "$3" | cut -f2 | unquote; }

# A TLS file a runner uses once the new files are live: its own (tls-ca-file, tls-cert-file,
# tls-key-file), else <config dir>/certs/<host><suffix> when there is one (network/client.go's
# findCertificate: .crt, .auth.crt, .auth.key); the staged copy where this sync brings that file.
# Arguments: the runner's setting (or empty), its url, the suffix. Empty: none.
tls_file() {
  file="$1"
  if [ -z "$file" ]; then
    host="$(printf '%s\n' "$2" | sed 's|^[A-Za-z][A-Za-z0-9+.-]*://||; s|[/?#].*$||; s|^.*@||; s|:.*$||')"
    file="$dir/certs/$host$3"
  fi
  case "$file" in
    "$dir"/certs/*)
      if [ -f "$work/certs/${file#"$dir"/certs/}" ]; then file="$work/certs/${file#"$dir"/certs/}"; fi
      ;;
  esac
  if [ -f "$file" ]; then printf '%s' "$file"; fi
}

# What the runner's TLS client trusts with a CA file: the system's roots and that file.
bundle_for() {
  bundle="$work/bundle-$(basename "$1")"
  {
    for roots in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem; do
      if [ -f "$roots" ]; then cat "$roots"; break; fi
    done
    cat "$1"
  } > "$bundle"
  printf '%s' "$bundle"
}

# POST <url>/api/v4/runners/verify with {token, system_id} from a file, as the runner's verify sends
# it; prints the status (000: no answer) and leaves the client's error in <out>.err and a redirect's
# target in <out>.location. Arguments: url, token, output file, CA file, client certificate and key
# (each may be empty), and the call's request id (the same on each attempt, as the runner's
# addCorrelationID sends one per call).
verify_request() {
  endpoint="$(printf '%s\n' "$1" | sed 's|/*$||; s|/ci$||')/api/v4/runners/verify"
  out="$3"
  body="$work/body"
  ca=""
  if [ -n "$4" ]; then ca="$(bundle_for "$4")"; fi
  cert="$5" key="$6" rid="$7"
  if [ -z "$cert" ] || [ -z "$key" ]; then cert="" key=""; fi
  system_id="$(cat "$work/.runner_system_id" 2> /dev/null || true)"
  cat > "$body" <<JSON
{"token":"$2","system_id":"$system_id"}
JSON
  : > "$out.location"
  set --
  if [ "$client" = curl ]; then
    if [ -n "$ca" ]; then set -- --cacert "$ca"; fi
    if [ -n "$cert" ]; then set -- "$@" --cert "$cert" --key "$key"; fi
    code="$(curl -sS -o "$out" -w '%{http_code} %{redirect_url}' --max-time 30 -X POST \
      -H 'Content-Type: application/json' -H 'Accept: application/json' -H "X-Request-Id: $rid" --data-binary "@$body" \
      "$@" "$endpoint" 2> "$out.err")" || true
    printf '%s\n' "${code#* }" > "$out.location"
    code="${code%% *}"
  else
    if [ -n "$ca" ]; then set -- "--ca-certificate=$ca"; fi
    if [ -n "$cert" ]; then set -- "$@" "--certificate=$cert" "--private-key=$key"; fi
    wget -nv -S -O "$out" -T 30 -t 1 --max-redirect=0 --content-on-error \
      --header='Content-Type: application/json' --header='Accept: application/json' "--header=X-Request-Id: $rid" \
      "--post-file=$body" "$@" "$endpoint" 2> "$out.err" || true
    code="$(awk '/^  HTTP\// { code = $2 } END { print code }' "$out.err")"
    sed -n 's/^  Location: *//p' "$out.err" | tail -n 1 > "$out.location"
  fi
  rm -f "$body"
  printf '%s' "${code:-000}"
}

credentials="$work/credentials"
: > "$credentials"
: > "$work/seeds"
runner_lines "$staged" "url token tls-ca-file" | sort > "$work/staged-fields"
rotation_off "$staged" > "$work/rotation-off"
for name in $(cut -f1 "$work/staged-fields" | sort -u); do
  token="$(field "$name" token "$work/staged-fields")"
  url="$(field "$name" url "$work/staged-fields")"
  ca_file="$(field "$name" tls-ca-file "$work/staged-fields")"
  [ -n "$token" ] && [ -n "$url" ] || fail "runner $name has no url or token in the staged config"
  hash="$(printf '%s' "$token" | sha256sum | cut -c1-64)"
  echo "$name $hash" >> "$work/seeds"
  if grep -qx "$name $hash" "$seeds" && [ -f "$conf" ] \
    && runner_lines "$conf" "token" | grep -q "^$name	"; then
    # Delivered before: whatever the runner holds now is current.
    runner_lines "$conf" "id token token_obtained_at token_expires_at" | grep "^$name	" > "$work/held"
    if grep -qx "$name" "$work/rotation-off" || grep -q "	token_expires_at[[:space:]]*=[[:space:]]*[1-9]" "$work/held"; then
      cat "$work/held" >> "$credentials"
      continue
    fi
    # It holds no expiry (its rotation was off, or GitLab sets none): GitLab's answer for the token it
    # holds says when it expires, so a runner back on one host rotates its token again.
    token="$(grep "^$name	token[[:space:]]*=" "$work/held" | cut -f2 | unquote)"
    refresh=1
  else
    refresh=""
  fi
  # A token the runner has not seen: verify it the runner's own way, with the runner's system id.
  reg="$work/register-$name"
  mkdir -p "$reg"
  if [ -f "$work/.runner_system_id" ]; then cp "$work/.runner_system_id" "$reg/.runner_system_id"; fi
  if ! CI_SERVER_TOKEN="$token" CI_SERVER_TLS_CA_FILE="$(tls_file "$ca_file" "$url" .crt)" "$runner" register \
    --non-interactive --config "$reg/config.toml" --url "$url" --name "$name" --executor shell > "$reg/log" 2>&1; then
    if [ -n "$refresh" ]; then
      # Only a refresh of what the runner holds: keep it; the check below says what is wrong, if anything.
      cat "$work/held" >> "$credentials"
      continue
    fi
    mask < "$reg/log" >&2
    answer="$(answer_in "$reg/log")"
    if [ "$answer" = "GitLab answered 403 Forbidden" ] && [ ! -s "$conf" ]; then
      echo "config sync: GitLab refuses the stack's token of runner $name (403 Forbidden) and this config volume is new, holding no token of the runner's own: if the runner had rotated its token itself, the current one went with the volume. Nothing was changed. Give the runner a new token through the stack: create a new runner in GitLab and set runnerTokens.$name to its token (or raise the runner's tokenGeneration), then run pulumi up" >&2
      exit 3
    fi
    fail "the check of runner $name's token at $url failed: $answer; nothing was changed"
  fi
  if [ ! -f "$work/.runner_system_id" ] && [ -f "$reg/.runner_system_id" ]; then
    cp "$reg/.runner_system_id" "$work/.runner_system_id"
  fi
  runner_lines "$reg/config.toml" "id token token_obtained_at token_expires_at" \
    | sed "s/^[^	]*	/$name	/" >> "$credentials"
done

# No expiry for a runner that must not rotate its token (see above).
awk -v off="$work/rotation-off" '
  BEGIN { while ((getline line < off) > 0) skip[line] = 1 }
  { tab = index($0, "\t"); name = substr($0, 1, tab - 1); line = substr($0, tab + 1) }
  (name in skip) && line ~ /^token_expires_at[[:space:]]*=/ { next }
  { print }
' "$credentials" > "$work/credentials.kept"
mv "$work/credentials.kept" "$credentials"

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

# The check: GitLab answers 200 to each runner of the new file, reached as the runner will reach it.
if command -v curl > /dev/null 2>&1; then
  client=curl
elif wget --version 2> /dev/null | grep -q 'GNU Wget'; then
  client=wget
else
  fail "neither curl nor GNU wget is in this image: the new config.toml cannot be checked with GitLab; nothing was changed"
fi
runner_lines "$work/config.toml" "url token tls-ca-file tls-cert-file tls-key-file" | sort > "$work/fields"
problems=""
for name in $(cut -f1 "$work/fields" | sort -u); do
  token="$(field "$name" token "$work/fields")"
  url="$(field "$name" url "$work/fields")"
  endpoint="$(printf '%s\n' "$url" | sed 's|/*$||; s|/ci$||')/api/v4/runners/verify"
  case "$token" in
    '' | *[!A-Za-z0-9_.-]*)
      problems="${problems:+$problems; }runner $name: its token is not a GitLab runner token"
      continue
      ;;
  esac
  ca="$(tls_file "$(field "$name" tls-ca-file "$work/fields")" "$url" .crt)"
  cert="$(tls_file "$(field "$name" tls-cert-file "$work/fields")" "$url" .auth.crt)"
  key="$(tls_file "$(field "$name" tls-key-file "$work/fields")" "$url" .auth.key)"
  answer="$work/verify-$name"
  # Tried as the runner's retry requester tries a call (network/retry_requester.go): 408, 429 and 5xx
  # again, five attempts in all, a second apart.
  attempt=1
  request_id="gitlab-runners-sync-$(basename "$work")-$name"  # mktemp names each sync run apart
  while :; do
    code="$(verify_request "$url" "$token" "$answer" "$ca" "$cert" "$key" "$request_id")"
    case "$code" in
      408 | 429 | 5??) [ "$attempt" -lt 5 ] || break ;;
      *) break ;;
    esac
    attempt=$((attempt + 1))
    sleep 1
  done
  case "$code" in
    200) continue ;;
    403) why="GitLab refused its token (403): revoked, expired, or not a runner token of that instance" ;;
    000)
      error="$(grep -v '^  ' "$answer.err" | grep -v '^[[:space:]]*$' | head -n 1 | mask)"
      why="no answer (${error:-none}): a gitlabUrl this host cannot reach, or TLS failed"
      if [ -n "$ca" ]; then why="$why with the CA $(basename "$ca") (is it the CA that signed the certificate of GitLab?)"; fi
      ;;
    408 | 429 | 5??) why="GitLab answered $(status_named "$code") (after $attempt tries): it is down or failing; run pulumi up again once it answers" ;;
    3??) why="it answered $code, a redirect to $(head -n 1 "$answer.location"): set gitlabUrl to where it points" ;;
    *) why="it answered $code where GitLab answers 200: is gitlabUrl the address of the GitLab instance?" ;;
  esac
  problems="${problems:+$problems; }runner $name: POST $endpoint: $why"
done
[ -z "$problems" ] || fail "$problems; nothing was changed (config.toml and the CA in use stay as they were)"

# The runner's own `verify` of the new file, with the staged CA in place of the live one: the proof
# that the runner loads it (it fails on a file it cannot decode, and on a 403).
mkdir -p "$work/verify"
cp "$work/config.toml" "$work/verify/config.toml"
for ca in "$work"/certs/*.crt; do
  [ -f "$ca" ] || continue
  sed "s|\"$dir/certs/$(basename "$ca")\"|\"$ca\"|" "$work/verify/config.toml" > "$work/verify/next"
  mv "$work/verify/next" "$work/verify/config.toml"
done
if [ -f "$work/.runner_system_id" ]; then cp "$work/.runner_system_id" "$work/verify/.runner_system_id"; fi
if ! "$runner" verify --config "$work/verify/config.toml" > "$work/verify.log" 2>&1; then
  mask < "$work/verify.log" >&2
  fail "the check of the new config.toml failed: $(answer_in "$work/verify.log"); nothing was changed"
fi

# Everything checked: the CA, then config.toml, each in one rename (an unchanged CA is not touched,
# so the runner keeps its TLS connections).
for ca in "$work"/certs/*.crt; do
  [ -f "$ca" ] || continue
  live="$dir/certs/$(basename "$ca")"
  if [ -f "$live" ] && cmp -s "$ca" "$live"; then continue; fi
  mkdir -p "$dir/certs"
  cp "$ca" "$live.new"
  chmod 0644 "$live.new"
  mv "$live.new" "$live"
done
if [ ! -f "$dir/.runner_system_id" ] && [ -f "$work/.runner_system_id" ]; then
  cp "$work/.runner_system_id" "$dir/.runner_system_id"
fi
cp "$work/config.toml" "$dir/.config.toml.new"
mv "$dir/.config.toml.new" "$conf"
cp "$work/seeds" "$seeds"
echo "config sync: config.toml installed ($(grep -c '^\[\[runners\]\]' "$work/config.toml") runner(s))"
