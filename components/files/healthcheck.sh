# The runner container's health check (components/docker_runner.py puts it in the container's
# HEALTHCHECK with the metrics address filled in). It judges each runner of config.toml by its job
# requests since the check before, not by counts since the runner started:
# gitlab_runner_api_request_statuses_total is a counter (network/api_requests_collector.go at v18.9.0,
# labels runner - the token's short form -, system_id, endpoint, status, method) and never falls, so one
# answered request would otherwise read healthy forever, and one working runner would hide a broken one
# beside it. The check keeps the previous scrape (and the runner process's start time, which tells a new
# process whose counters began again) in a file of the config volume, root's only, and for each runner
# looks at what its request_job counters gained since then:
#   - some answered (2xx) and none refused: healthy (a 403 decides: a token GitLab refused stays so);
#   - only other answers: unhealthy, naming the runner and the answers (403: a token GitLab refuses; -1:
#     no answer at all, GitLab unreachable or TLS failing; 5xx: GitLab failing);
#   - none at all (every job slot busy, or the runner holding back after 403s): the runner's verdict from
#     the check before stands; a runner that has had none yet is unhealthy.
# A runner keeps its verdict when its token, and so its label, changes (a rotation). It prints runner
# names and counts only (Docker keeps this output in `docker inspect`), never a token or its short form.
url="http://__ADDRESS__:__PORT__/metrics"
config="${CONFIG_FILE:-/etc/gitlab-runner/config.toml}"
state="${HEALTH_STATE:-$(dirname "$config")/.gitlab-runners-health}"
umask 077
metrics="$(wget -q -T 5 -O - "$url" 2>/dev/null || curl -fsS -m 5 "$url" 2>/dev/null)" || {
  echo "unhealthy: no metrics at $url: the runner is not running, or its config.toml did not load"
  exit 1
}
[ -f "$state" ] || : > "$state"
printf '%s\n' "$metrics" | awk -v config="$config" -v state="$state" -v next_state="$state.next" '
  # The runner label of a token: helpers/shorten_token.go (the known prefixes off, 9 characters kept).
  function short(t) {
    if (t ~ /^glrt-t[123]_/) t = substr(t, 9)
    else if (t ~ /^glrt-/) t = substr(t, 6)
    else if (t ~ /^t[123]_/) t = substr(t, 4)
    else if (t ~ /^glrtr-/) t = substr(t, 7)
    if (t ~ /^glcbt-/) t = substr(t, 7)
    if (t ~ /^GR[0-9A-Fa-f][0-9A-Fa-f][0-9A-Fa-f][0-9A-Fa-f][0-9A-Fa-f][0-9A-Fa-f][0-9A-Fa-f]/) t = substr(t, 10)
    return substr(t, 1, 9)
  }
  function label(line, key,   at, rest) {
    at = index(line, "{" key "=\"")
    if (!at) at = index(line, "," key "=\"")
    if (!at) return ""
    rest = substr(line, at + length(key) + 3)
    return substr(rest, 1, index(rest, "\"") - 1)
  }
  function unquote(line) {
    sub(/^[^=]*=[[:space:]]*"/, "", line); sub(/"[[:space:]]*$/, "", line)
    return line
  }
  BEGIN {
    FS = " "
    # Each [[runners]] entry of config.toml: its name and the label its token gives it.
    while ((getline line < config) > 0) {
      if (line ~ /^[[:space:]]*\[\[runners\]\][[:space:]]*$/) { n++; inside = 1; continue }
      if (line ~ /^[[:space:]]*\[/) { inside = 0; continue }
      if (inside && line ~ /^[[:space:]]*name[[:space:]]*=/) names[n] = unquote(line)
      if (inside && line ~ /^[[:space:]]*token[[:space:]]*=/) labels[n] = short(unquote(line))
    }
    close(config)
    # The check before: "started<TAB>time", "count<TAB>label<TAB>status<TAB>value", "verdict<TAB>name<TAB>text".
    while ((getline line < state) > 0) {
      split(line, part, "\t")
      if (part[1] == "started") started = part[2]
      else if (part[1] == "count") before[part[2] SUBSEP part[3]] = part[4]
      else if (part[1] == "verdict") previous[part[2]] = part[3]
    }
    close(state)
  }
  /^process_start_time_seconds / { now_started = $2 }
  /^gitlab_runner_api_request_statuses_total\{/ && label($0, "endpoint") == "request_job" {
    now[label($0, "runner") SUBSEP label($0, "status")] += $NF
  }
  END {
    if (now_started != started) {
      # Another runner process: its counters began again and nothing from before is about it.
      for (key in before) delete before[key]
      for (key in previous) delete previous[key]
    }
    printf "started\t%s\n", now_started > next_state
    for (key in now) {
      split(key, part, SUBSEP)
      printf "count\t%s\t%s\t%s\n", part[1], part[2], now[key] > next_state
    }
    healthy = 0; good = ""; bad = ""
    for (i = 1; i <= n; i++) {
      name = names[i]; answered = 0; codes = ""; refused = 0; unanswered = 0; failing = 0
      for (key in now) {
        split(key, part, SUBSEP)
        if (part[1] != labels[i]) continue
        delta = now[key] - ((key in before) ? before[key] : 0)
        if (delta < 0) delta = now[key]
        if (delta <= 0) continue
        if (part[2] ~ /^2/) { answered += delta; continue }
        codes = codes (codes == "" ? "" : ", ") part[2] " x" delta
        if (part[2] == "403") refused = 1
        else if (part[2] == "-1") unanswered = 1
        else if (part[2] ~ /^5/) failing = 1
      }
      # A token GitLab refused stays refused (a new token is a new label): a 403 decides even when
      # answers before it share the window, and the runner holds back after three of them.
      if (answered > 0 && !refused) verdict = "ok"
      else if (codes != "") {
        if (refused) why = "GitLab refuses its token (revoked, expired, or reset elsewhere)"
        else if (unanswered) why = "no answer from GitLab (unreachable, or TLS failed)"
        else if (failing) why = "GitLab is failing or down"
        else why = "GitLab does not answer them as it answers a runner"
        verdict = "its last job requests failed (" codes "): " why
      }
      else if (name in previous) verdict = previous[name]
      else verdict = "GitLab has answered none of its job requests yet"
      printf "verdict\t%s\t%s\n", name, verdict > next_state
      if (verdict == "ok") { healthy++; good = good (good == "" ? "" : ", ") name }
      else bad = bad (bad == "" ? "" : "; ") "runner " name ": " verdict
    }
    close(next_state)
    if (n == 0) { print "unhealthy: config.toml has no runner"; exit 1 }
    if (bad != "") { printf "unhealthy: %s (%d of %d runners healthy)\n", bad, healthy, n; exit 1 }
    printf "healthy: GitLab answers the job requests of %s\n", good
  }
'
status=$?
mv -f "$state.next" "$state" 2>/dev/null
exit "$status"
