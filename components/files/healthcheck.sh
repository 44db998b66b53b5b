# The runner container's health check (components/docker_runner.py puts it in the container's
# HEALTHCHECK with the metrics port filled in). Healthy when the runner serves its metrics on
# 127.0.0.1 (so it is running with a config.toml it could load) and GitLab has answered at least one of
# its job requests (so it reaches GitLab with a token GitLab accepts). It prints counts only: Docker
# keeps this output in `docker inspect`, and the metrics carry short tokens in their labels.
url="http://__ADDRESS__:__PORT__/metrics"
metrics="$(wget -q -T 5 -O - "$url" 2>/dev/null || curl -fsS -m 5 "$url" 2>/dev/null)" || {
  echo "unhealthy: no metrics at $url: the runner is not running, or its config.toml did not load"
  exit 1
}
answered="$(printf '%s\n' "$metrics" | awk '
  /^gitlab_runner_api_request_statuses_total\{/ && /endpoint="request_job"/ && /status="20[14]"/ { n += $NF }
  END { printf "%d", n }')"
if [ "$answered" -eq 0 ]; then
  echo "unhealthy: GitLab has answered none of the runner's job requests yet (unreachable, or a token it refuses)"
  exit 1
fi
echo "healthy: GitLab answered $answered job request(s)"
