#!/bin/sh
# Housekeeping on a Docker host (components/docker_housekeeping.py): removes what the runner's jobs
# left behind, once it is older than HOUSEKEEPING_MAX_AGE_SECONDS, every HOUSEKEEPING_EVERY_SECONDS.
#
# What is the runner's is told by the labels gitlab-runner 18.9.0 puts on it (executors/docker/internal/
# labels, volumes/manager.go): com.gitlab.gitlab-runner.managed=true on every job container, cache
# volume and job network, com.gitlab.gitlab-runner.type=cache on cache volumes. Nothing without that
# label is ever listed here, so nothing else on the host is touched:
#   - job containers that are not running (exited, dead, or created and never started), stopped that
#     long ago (created that long ago, if never started), and whose job has no container still running
#     (a job's helper container waits stopped between its stages); removed with their anonymous volumes,
#     which belonged to them alone;
#   - cache volumes no container uses (not even a stopped one), created that long ago;
#   - job networks no container uses, created that long ago.
# Images and the build cache carry no such label (a job's image is pulled by name, a `docker build` in a
# job is the job's own): which of them a job left cannot be told, so they are left alone.
#
#   housekeeping.sh run            pass after pass (the container's command)
#   housekeeping.sh once           one pass
#   housekeeping.sh epoch <time>   seconds since the epoch of an RFC 3339 time (tests)
set -u
set -f  # names are split into words below, never globbed

LABEL=com.gitlab.gitlab-runner.managed=true
JOB_LABEL=com.gitlab.gitlab-runner.job.id

say() {
  echo "housekeeping: $*"
}

# A decimal number without leading zeros: shell arithmetic reads 08 as a bad octal number.
decimal() {
  number=$1
  while [ "${number#0}" != "$number" ] && [ -n "${number#0}" ]; do
    number=${number#0}
  done
  echo "${number:-0}"
}

# Seconds since the epoch of an RFC 3339 time as Docker writes it (2025-11-30T15:55:12.123456789Z,
# 2025-11-30T16:55:12+01:00), in shell arithmetic: date(1) parses it differently on every image.
epoch() {
  stamp=$1
  day=${stamp%%T*}
  clock=${stamp#*T}
  year=$(decimal "${day%%-*}")
  rest=${day#*-}
  month=$(decimal "${rest%%-*}")
  mday=$(decimal "${rest#*-}")
  hour=$(decimal "${clock%%:*}")
  rest=${clock#*:}
  minute=$(decimal "${rest%%:*}")
  rest=${rest#*:}
  second=${rest%%[!0-9]*}
  zone=${rest#"$second"}
  second=$(decimal "$second")
  case $zone in
    .*) zone=${zone#.}; zone=${zone#"${zone%%[!0-9]*}"} ;;
  esac
  offset=0
  case $zone in
    [+-]??:??)
      sign=${zone%"${zone#?}"}
      zone=${zone#?}
      offset=$(( $(decimal "${zone%%:*}") * 3600 + $(decimal "${zone#*:}") * 60 ))
      [ "$sign" = "-" ] && offset=$(( -offset ))
      ;;
  esac
  # Days since 1970-01-01 of a civil date (the proleptic Gregorian calendar; years from 1 on).
  y=$(( month <= 2 ? year - 1 : year ))
  era=$(( y / 400 ))
  yoe=$(( y - era * 400 ))
  doy=$(( (153 * ((month + 9) % 12) + 2) / 5 + mday - 1 ))
  doe=$(( yoe * 365 + yoe / 4 - yoe / 100 + doy ))
  days=$(( era * 146097 + doe - 719468 ))
  echo $(( days * 86400 + hour * 3600 + minute * 60 + second - offset ))
}

age_text() {
  seconds=$1
  if [ "$seconds" -ge 86400 ]; then echo "$(( seconds / 86400 ))d"
  elif [ "$seconds" -ge 3600 ]; then echo "$(( seconds / 3600 ))h"
  elif [ "$seconds" -ge 60 ]; then echo "$(( seconds / 60 ))m"
  else echo "${seconds}s"
  fi
}

containers() {
  now=$1
  cutoff=$2
  running=$(docker ps --filter "label=$LABEL" --format "{{.Label \"$JOB_LABEL\"}}") || return 1
  for id in $(docker ps --all --quiet --no-trunc --filter "label=$LABEL" \
    --filter status=exited --filter status=dead --filter status=created); do
    found=$(docker inspect --format \
      "{{.State.Status}} {{.Created}} {{.State.FinishedAt}} {{.Name}} {{index .Config.Labels \"$LABEL_KEY\"}} {{index .Config.Labels \"$JOB_LABEL\"}}" \
      "$id" 2>/dev/null) || continue
    # shellcheck disable=SC2086 # words: the labels come last, as they may be empty
    set -- $found
    status=$1 created=$2 finished=$3 name=$4 managed=${5:-} job=${6:-}
    [ "$managed" = true ] || continue  # never anything without the runner's label
    if [ -n "$job" ] && printf '%s\n' "$running" | grep -qx "$job"; then
      continue  # its job is still running
    fi
    since=$finished
    case $status:$finished in
      created:* | *:0001-01-01T*) since=$created ;;
    esac
    since=$(epoch "$since")
    [ "$since" -le "$cutoff" ] || continue
    if docker rm --volumes "$id" >/dev/null 2>&1; then
      removed_containers=$(( removed_containers + 1 ))
      say "removed job container ${name#/} (job ${job:-unknown}, $status $(age_text $(( now - since ))) ago)"
    fi
  done
}

volumes() {
  now=$1
  cutoff=$2
  for volume in $(docker volume ls --quiet --filter dangling=true --filter "label=$LABEL" \
    --filter "label=com.gitlab.gitlab-runner.type=cache"); do
    found=$(docker volume inspect --format \
      "{{.CreatedAt}} {{index .Labels \"$LABEL_KEY\"}} {{index .Labels \"com.gitlab.gitlab-runner.type\"}}" \
      "$volume" 2>/dev/null) || continue
    # shellcheck disable=SC2086
    set -- $found
    [ "${2:-}" = true ] && [ "${3:-}" = cache ] || continue
    created=$(epoch "$1")
    [ "$created" -le "$cutoff" ] || continue
    # Refused while any container uses it: a job that took it meanwhile keeps it.
    if docker volume rm "$volume" >/dev/null 2>&1; then
      removed_volumes=$(( removed_volumes + 1 ))
      say "removed cache volume $volume (created $(age_text $(( now - created ))) ago)"
    fi
  done
}

networks() {
  max_age=$1
  # Only networks no container uses; until= counts from their creation.
  pruned=$(docker network prune --force --filter "label=$LABEL" --filter "until=${max_age}s" 2>&1) || {
    say "network prune failed: $pruned"
    return 1
  }
  for network in $(printf '%s\n' "$pruned" | sed -n '/^Deleted Networks:/,$p' | sed '1d'); do
    removed_networks=$(( removed_networks + 1 ))
    say "removed job network $network"
  done
}

pass() {
  max_age=$HOUSEKEEPING_MAX_AGE_SECONDS
  if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    say "the Docker API does not answer on ${DOCKER_HOST:-the socket}; next try in ${HOUSEKEEPING_EVERY_SECONDS}s"
    return 1
  fi
  now=$(date +%s)
  cutoff=$(( now - max_age ))
  removed_containers=0
  removed_volumes=0
  removed_networks=0
  # Containers first: the cache volumes of the ones removed are then no longer in use.
  containers "$now" "$cutoff"
  volumes "$now" "$cutoff"
  networks "$max_age"
  say "pass done: removed $removed_containers container(s), $removed_volumes volume(s)," \
    "$removed_networks network(s) older than $(age_text "$max_age")"
}

LABEL_KEY=${LABEL%%=*}

case "${1:-run}" in
  epoch)
    epoch "$2"
    ;;
  once)
    pass
    ;;
  run)
    trap 'say "stopping"; exit 0' TERM INT
    say "every $(age_text "$HOUSEKEEPING_EVERY_SECONDS"): job containers, cache volumes and job networks" \
      "labelled $LABEL, older than $(age_text "$HOUSEKEEPING_MAX_AGE_SECONDS")"
    while :; do
      pass
      sleep "$HOUSEKEEPING_EVERY_SECONDS" &
      wait $!
    done
    ;;
  *)
    echo "usage: $0 run|once|epoch <time>" >&2
    exit 2
    ;;
esac
