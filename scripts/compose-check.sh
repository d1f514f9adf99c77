#!/usr/bin/env bash
# scripts/compose-check.sh [--agents N] [--steps N]
#
# Runs a training job through deploy/compose.yaml end to end and tears it all down again, also on failure:
#   1. build the image (scripts/build-image.sh; a local base image where no registry answers) and, where
#      prom/prometheus cannot be pulled, a Prometheus image from Debian's package (deploy/prometheus/Containerfile);
#   2. up: the coordinator, N agents (3), the gateway (waiting for a model) and Prometheus, the token and the
#      gateway's admin key as compose secrets;
#   3. train: a tiny GPT on the demo corpus (the demo's shape, data-parallel on every agent, elastic down to one),
#      killing one agent container (podman kill) once the job has checkpointed, and waiting for the job to
#      succeed anyway and register its model;
#   4. serve: wait for the gateway to load the new model (/readyz), POST /v1/completions to it, expect 200 with
#      text; check that Prometheus scrapes the coordinator, the gateway and the agents, and every health check;
#   5. down: containers, volumes, network and secrets removed.
# Progress lines go to stderr; the last line on stdout is a one-line JSON summary. Exit 0 only if every check held.
# The host ports are 17070 (coordinator), 18080 (gateway), 19090 (Prometheus): MESHTRAIN_*_PORT to change them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/container-engine.sh

agents=3
steps=300
while [ $# -gt 0 ]; do
  case $1 in
    --agents) agents=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$agents" -ge 2 ] || { echo "--agents must be at least 2: one of them is killed" >&2; exit 2; }

project=meshtrain-check
export MESHTRAIN_IMAGE=localhost/meshtrain:check
export MESHTRAIN_AGENTS=$agents
export MESHTRAIN_COORDINATOR_PORT=${MESHTRAIN_COORDINATOR_PORT:-17070}
export MESHTRAIN_GATEWAY_PORT=${MESHTRAIN_GATEWAY_PORT:-18080}
export MESHTRAIN_PROMETHEUS_PORT=${MESHTRAIN_PROMETHEUS_PORT:-19090}
coordinator=http://127.0.0.1:$MESHTRAIN_COORDINATOR_PORT
gateway=http://127.0.0.1:$MESHTRAIN_GATEWAY_PORT
prometheus=http://127.0.0.1:$MESHTRAIN_PROMETHEUS_PORT

if [ "$ENGINE" = podman ]; then
  command -v podman-compose >/dev/null || { echo "podman-compose is missing: apt-get install podman-compose" >&2; exit 1; }
  compose=(podman-compose -p "$project" -f deploy/compose.yaml)
else
  compose=(docker compose -p "$project" -f deploy/compose.yaml)
fi

t0=$(date +%s)
phase_start=$t0
declare -A seconds
say() { echo "compose-check [$(( $(date +%s) - t0 ))s] $*" >&2; }
end_phase() { seconds[$1]=$(( $(date +%s) - phase_start )); phase_start=$(date +%s); }
fail() { say "FAILED: $*"; exit 1; }

# The secrets live in a private folder for the run; the containers (uid 10001) read them through bind mounts.
secrets=$(mktemp -d /tmp/meshtrain-check.XXXXXX)
export MESHTRAIN_SECRETS=$secrets
node -e 'process.stdout.write(require("crypto").randomBytes(24).toString("hex"))' >"$secrets/token"
node -e 'process.stdout.write(require("crypto").randomBytes(24).toString("hex"))' >"$secrets/gateway_admin_key"
chmod 644 "$secrets/token" "$secrets/gateway_admin_key"
printf 'Authorization: Bearer %s\n' "$(cat "$secrets/token")" >"$secrets/auth-header" # curl -H @file: not in ps
chmod 600 "$secrets/auth-header"

teardown() {
  local rc=$?
  trap - EXIT INT TERM
  phase_start=$(date +%s)
  local names c
  names=$($ENGINE ps -a --format '{{.Names}}' --filter "label=com.docker.compose.project=$project" 2>/dev/null || true)
  if [ $rc -ne 0 ] && [ -n "$names" ]; then
    say "logs of the stack before teardown (last 20 lines each):"
    for c in $names; do
      echo "---- $c" >&2
      $ENGINE logs --tail 20 "$c" 2>&1 | grep -v 'systemd connection' >&2 || true
    done
  fi
  say "tearing down"
  # Stop (SIGTERM, 10 s grace) and remove every container of the project with its anonymous volumes (the image's
  # /data in agents and the gateway), then let compose remove the named volumes; its network goes last.
  if [ -n "$names" ]; then
    # shellcheck disable=SC2086
    $ENGINE stop -t 10 $names >/dev/null 2>&1 || true
    # shellcheck disable=SC2086
    $ENGINE rm -f -v $names >/dev/null 2>&1 || true
  fi
  "${compose[@]}" down -v >/dev/null 2>&1 || true
  for v in $($ENGINE volume ls --format '{{.Name}}' 2>/dev/null | grep "^${project}_" || true); do
    $ENGINE volume rm -f "$v" >/dev/null 2>&1 || true
  done
  $ENGINE network rm -f "${project}_default" >/dev/null 2>&1 || true
  rm -rf "$secrets"
  seconds[down]=$(( $(date +%s) - phase_start ))
  local ok=false; [ $rc -eq 0 ] && ok=true
  printf '{"ok":%s,"engine":"%s","imageBytes":%s,"baseImage":"%s","agents":%s,"steps":%s,"jobState":"%s","jobAttempts":%s,"modelVersion":"%s","completionChars":%s,"prometheusTargetsUp":"%s","healthy":"%s","seconds":{"build":%s,"up":%s,"train":%s,"serve":%s,"down":%s,"total":%s}}\n' \
    "$ok" "$ENGINE" "${image_bytes:-0}" "${base_used:-}" "$agents" "$steps" "${job_state:-none}" "${job_attempts:-0}" "${model_version:-}" \
    "${completion_chars:-0}" "${targets_up:-}" "${health:-}" "${seconds[build]:-0}" "${seconds[up]:-0}" "${seconds[train]:-0}" "${seconds[serve]:-0}" \
    "${seconds[down]:-0}" "$(( $(date +%s) - t0 ))"
  exit $rc
}
trap teardown EXIT
trap 'exit 130' INT TERM

# GET/POST on the coordinator's API with the token; prints the body, or fails with it on stderr (non-2xx status).
api() { # METHOD PATH [JSON]
  local body
  body=$(curl -sS --fail-with-body --max-time 30 -H @"$secrets/auth-header" -H 'content-type: application/json' \
    -X "$1" "$coordinator$2" ${3:+--data "$3"}) || { echo "$1 $2: ${body:-no answer}" >&2; return 1; }
  echo "$body"
}
json() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const v=JSON.parse(s);console.log(eval(process.argv[1]))})' "$1"; }
wait_for() { # SECONDS WHAT COMMAND…: retries COMMAND every 2 s
  local deadline=$(( $(date +%s) + $1 )) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out waiting for $what"
    sleep 2
  done
}

# --- 1. build ---------------------------------------------------------------------------------------------------
say "building $MESHTRAIN_IMAGE"
scripts/build-image.sh --tag "$MESHTRAIN_IMAGE" >"$secrets/build.log" 2>&1 || { tail -30 "$secrets/build.log" >&2; fail "image build"; }
grep '^build-image:' "$secrets/build.log" | sed 's/^/  /' >&2
image_bytes=$($ENGINE image inspect "$MESHTRAIN_IMAGE" --format '{{.Size}}')
base_used=$(sed -n 's/^build-image: building .* from \([^ ]*\) .*/\1/p' "$secrets/build.log")
official_prometheus=docker.io/prom/prometheus:v2.53.2 # compose.yaml's default image
if ! $ENGINE image inspect "$official_prometheus" >/dev/null 2>&1 && ! $ENGINE pull -q "$official_prometheus" >/dev/null 2>&1; then
  export PROMETHEUS_IMAGE=localhost/meshtrain-prometheus:debian
  if ! $ENGINE image inspect "$PROMETHEUS_IMAGE" >/dev/null 2>&1; then
    say "prom/prometheus cannot be pulled: building $PROMETHEUS_IMAGE from Debian's package"
    # shellcheck disable=SC2086
    $ENGINE build $ENGINE_NETWORK -q --build-arg BASE_IMAGE="$base_used" -t "$PROMETHEUS_IMAGE" \
      -f deploy/prometheus/Containerfile deploy/prometheus >"$secrets/prometheus-build.log" 2>&1 \
      || { tail -20 "$secrets/prometheus-build.log" >&2; fail "Prometheus image build"; }
  fi
fi
end_phase build
say "image $MESHTRAIN_IMAGE: $(( image_bytes / 1024 / 1024 )) MiB"

# --- 2. up --------------------------------------------------------------------------------------------------------
say "starting the coordinator, $agents agents, the gateway and Prometheus"
"${compose[@]}" up -d >"$secrets/up.log" 2>&1 || { tail -30 "$secrets/up.log" >&2; fail "compose up"; }
wait_for 120 "the coordinator's /healthz" curl -sf "$coordinator/healthz"
wait_for 120 "the gateway's /healthz (live, waiting for a model)" curl -sf "$gateway/healthz"
alive_agents() { api GET /api/nodes | json 'v.nodes.filter(n => n.status === "alive").length'; }
enough_agents() { [ "$(alive_agents)" -ge "$agents" ]; }
wait_for 180 "$agents agents to join" enough_agents
end_phase up
say "coordinator up, $(alive_agents) agents alive"

# --- 3. train, killing an agent half-way --------------------------------------------------------------------------
batch=$(( 4 * agents )) # 4 sequences an agent (the scheduler skips replica counts that do not divide it)
spec=$(cat <<EOF
{"name": "check-gpt",
 "model": {"vocabSize": 1024, "nCtx": 128, "nLayer": 2, "nHead": 4, "nEmbd": 64},
 "data": {"corpus": "demo"},
 "training": {"steps": $steps, "batchSize": $batch, "seqLen": 128, "seed": 1, "lr": 0.003, "minLr": 0.0003,
              "warmupSteps": $(( steps < 200 ? steps / 10 : 20 )), "evalEvery": $(( steps / 2 )), "evalBatches": 2, "checkpointEvery": $(( steps / 6 ))},
 "parallel": {"data": $agents, "minData": 1}}
EOF
)
job_id=$(api POST /api/jobs "$spec" | json 'v.id ?? v.job.id') || fail "job submission"
say "submitted job $job_id: tiny GPT (0.17 M parameters), $steps steps of $batch × 128 tokens on $agents agents"
# The last agent container, by compose's labels (podman-compose and docker compose name containers differently).
victim=$($ENGINE ps --filter "label=com.docker.compose.project=$project" --filter label=com.docker.compose.service=agent --format '{{.Names}}' | sort | tail -1)
[ -n "$victim" ] || fail "no agent container found to kill"
killed=false
deadline=$(( $(date +%s) + 1200 ))
last_step=-1
while :; do
  # GET /api/jobs/:id → {job, metrics, checkpoints}; ?after= skips the metrics history.
  now=$(api GET "/api/jobs/$job_id?after=999999999" | json '[v.job.state, v.job.step, v.checkpoints.length, v.job.attempt].join(" ")') \
    || fail "GET /api/jobs/$job_id"
  read -r job_state step checkpoints job_attempts <<<"$now"
  if [ "$step" != "$last_step" ] && [ $(( step / 50 )) -ne $(( last_step / 50 )) ]; then say "job $job_state, step $step/$steps, $checkpoints checkpoints"; fi
  last_step=$step
  case $job_state in succeeded) break ;; failed|cancelled) fail "job $job_state" ;; esac
  if ! $killed && [ "$checkpoints" -ge 1 ] && [ "$step" -ge $(( steps / 3 )) ]; then
    $ENGINE kill "$victim" >/dev/null || fail "could not kill $victim"
    killed=true
    say "killed agent container $victim at step $step (SIGKILL: no goodbye; the coordinator sees its heartbeats stop)"
  fi
  [ "$(date +%s)" -lt "$deadline" ] || fail "job still $job_state at step $step after 20 minutes"
  sleep 1
done
$killed || fail "the job ended before an agent could be killed (raise --steps)"
model_version=$(api GET "/api/jobs/$job_id?after=999999999" | json 'v.job.modelVersion === null ? "" : `check-gpt@v${v.job.modelVersion}`')
[ -n "$model_version" ] || fail "the job succeeded but registered no model version"
[ "$job_attempts" -ge 2 ] || say "note: the job finished in its first attempt (the kill did not stop it)"
end_phase train
say "job $job_id succeeded after the kill (attempts: $job_attempts); registered $model_version"

# --- 4. serve ---------------------------------------------------------------------------------------------------
wait_for 60 "the gateway to load check-gpt (/readyz)" curl -sf "$gateway/readyz"
say "gateway ready"
status=$(curl -sS --max-time 60 -o "$secrets/completion.json" -w '%{http_code}' -H 'content-type: application/json' \
  "$gateway/v1/completions" --data '{"model": "check-gpt", "prompt": "The State of the Union", "max_tokens": 32, "temperature": 0.8, "seed": 7}')
[ "$status" = 200 ] || { cat "$secrets/completion.json" >&2; fail "POST /v1/completions answered $status"; }
completion=$(json 'v.choices[0].text' <"$secrets/completion.json")
completion_chars=${#completion}
[ "$completion_chars" -gt 0 ] || fail "the completion is empty"
say "POST /v1/completions → 200: \"The State of the Union${completion//$'\n'/ }\""
# Prometheus: coordinator, gateway and the agents still running, all up (the gateway's first scrape may take 15 s).
targets_ok() {
  targets_up=$(curl -sf "$prometheus/api/v1/targets" | json 'Object.entries(v.data.activeTargets.reduce((m, t) => ((m[t.labels.job] ??= [0, 0])[t.health === "up" ? 0 : 1]++, m), {})).map(([j, [u, d]]) => `${j}:${u}/${u + d}`).sort().join(",")')
  [[ $targets_up =~ agents:[1-9] ]] && [[ $targets_up == *coordinator:1/1* ]] && [[ $targets_up == *gateway:1/1* ]]
}
wait_for 90 "Prometheus to scrape the coordinator, the gateway and the agents" targets_ok
say "Prometheus targets up: $targets_up"
# Every running container's health check (the image's for ours). Podman runs them on systemd timers only, so here
# they are run by hand; docker runs them itself and reports the status.
healthy=0 running=0
for c in $($ENGINE ps --format '{{.Names}}' --filter "label=com.docker.compose.project=$project"); do
  running=$(( running + 1 ))
  if [ "$ENGINE" = podman ]; then
    $ENGINE healthcheck run "$c" >/dev/null 2>&1 && healthy=$(( healthy + 1 )) || say "health check of $c failed"
  else
    is_healthy() { [ "$(docker inspect --format '{{.State.Health.Status}}' "$1")" = healthy ]; }
    wait_for 90 "$c to be healthy" is_healthy "$c" && healthy=$(( healthy + 1 ))
  fi
done
health="$healthy/$running"
[ "$healthy" -eq "$running" ] || fail "health checks: $health healthy"
say "health checks: $health containers healthy"
end_phase serve
