#!/usr/bin/env bash
# `make airflow`: Airflow for this project on http://127.0.0.1:${TL_AIRFLOW_PORT:-8080}, until Ctrl-C.
#
# Starts what `airflow standalone` starts (api-server, scheduler with the LocalExecutor, dag-processor,
# triggerer) but without the log servers, which would listen on every network interface: tasks run on this
# machine, so the api-server reads their logs straight from $AIRFLOW_HOME/logs. Settings and set-up (database,
# `gpu` pool) come from tl_tasks/airflow_local/env.py; component output is prefixed with the component's name.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
export PATH="$(cd "$(dirname "$PY")" && pwd):$PATH"
eval "$("$PY" -m tl_tasks.airflow_local.env)"
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=False
"$PY" -m tl_tasks.airflow_local.env --setup

# Each component runs in its own process group (setsid), so that stopping it reaches everything it started
# (gunicorn/uvicorn workers, LocalExecutor task processes, the output filter), not just a wrapper shell.
# SIGTERM first; whatever is still there after STOP_GRACE_S seconds gets SIGKILL: all is gone within 10 s.
STOP_GRACE_S="${TL_AIRFLOW_STOP_GRACE_S:-7}"
pids=()
stop() {
  # A second signal must not cut the clean-up short: `make airflow` forwards SIGTERM to this script, so stopping
  # make's process group (a supervisor's stop) delivers it twice.
  trap '' INT TERM
  trap - EXIT
  echo "[airflow] stopping..."
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  local end=$((SECONDS + STOP_GRACE_S))  # a clock, not a count of polls: a loaded machine polls slower
  while (( SECONDS < end )); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "[airflow] stopped"
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap stop EXIT

start() {  # start NAME ARGS...: run `airflow ARGS` in its own process group, output prefixed by [NAME]
  local name=$1; shift
  setsid bash -c 'name=$1; shift; airflow "$@" 2>&1 | sed -u "s/^/[$name] /"' _ "$name" "$@" &
  pids+=($!)
}
start api-server api-server --host 127.0.0.1 --port "$AIRFLOW__API__PORT"
start scheduler scheduler --skip-serve-logs
start dag-processor dag-processor
start triggerer triggerer --skip-serve-logs

url="http://127.0.0.1:$AIRFLOW__API__PORT"
for _ in $(seq 120); do
  "$PY" -c "import urllib.request as u; u.urlopen('$url/api/v2/monitor/health', timeout=2)" 2>/dev/null && break
  sleep 1
done
passwords="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated}"
cat <<BANNER

==============================================================================================
 Airflow is up: $url
 Log in as admin; the password is in $passwords
 DAG cifar10_retraining starts paused. Trigger it (the form takes profile, variants, epochs, ...), or
 switch it on: Airflow then starts the latest weekly run at once (TL_SCHEDULE=none: triggered runs only).
 Reports: $url -> Browse -> Retraining reports, or ${TL_HOME:-$PWD/tl_home}/reports/index.html
 Ctrl-C stops everything.
==============================================================================================

BANNER
wait -n "${pids[@]}" || true
echo "[airflow] a component exited; stopping the others"
