#!/usr/bin/env bash
# bench/fleet/run.sh: `fleet status <stage>` across hosts, over SSH and through the
# controller, and a controller holding 1,000 agents.
#
# Measures:
#   1. on a test bed of 20 hosts (deploy/testbed: network namespaces, each with its own
#      sshd and release fleet-agent running a few sleeper apps), the wall time of
#      `fleet status <stage> --json` for a stage of 5 hosts and one of 20, each run a
#      fresh CLI process (what a user waits for, SSH handshakes or the controller's TLS
#      handshake included): over SSH first, then through a fleet-controller in the root
#      namespace after every agent joined it; p50 and p99 per stage and path;
#   2. 1,000 simulated agents (10 apps each) against one real fleet-controller process:
#      the controller crate's ignored scale test (crates/controller/tests/it/scale.rs),
#      run from its release test binary. It joins 1,000 agents (each its own key,
#      certificate and TLS session), sends each one's snapshot of 10 processes, then
#      calls Status on the 1,000-host stage 200 times over one gRPC channel while
#      heartbeats flow (a fifth of the agents beat before every call); it prints p50, p99
#      and the controller's RSS. This script samples the controller process meanwhile
#      (/proc: utime+stime, VmRSS, VmHWM) for its CPU and peak memory;
#   4. the /metrics scrape (crates/controller/tests/it/metrics.rs, same binary): 1,000
#      agents x 10 instances with host metrics, 20 scrapes over HTTPS: p50 and max time
#      and the size (target: under 100 ms).
#   5. the web dashboard (crates/controller/tests/it/dashboard_bench.rs, same binary; needs
#      chromium): 1,000 agents x 10 instances reporting every second (a fifth with new
#      figures), the overview loaded 5 times in headless Chromium: time from navigation
#      to the first full render (target: under 1 s); bytes a second on one dashboard's
#      event stream, steady and during a fleet-wide restart; controller CPU and RSS with 10
#      dashboards' streams open.
#   6. controllers sharing a store (crates/controller/tests/it/ha_bench.rs, same binary;
#      needs Debian's postgresql): 10,000 simulated agents (--ha-hosts), each its own
#      certificate and TLS session with 10 apps, on one controller on SQLite, then spread
#      over three controllers sharing a PostgreSQL of the run's own; Status p50/p99 of the
#      whole stage and of 1,000 hosts through a controller holding a third (target p99
#      under 100 ms at 10,000, under 50 ms at 1,000), the time until every agent of a
#      SIGKILLed controller is back through the others (under 10 s), the database's row
#      writes a second steady and during a fleet-wide restart (under 1 a second per 1,000
#      hosts), each controller's RSS (under 300 MB) and the database's memory;
#   3. the abuse run (crates/controller/tests/it/abuse.rs, same binary): with the 1,000
#      agents connected, 200 unauthenticated clients send oversized (1 MiB), malformed
#      and guessed `Join`s and 50 clients call `Status` with a revoked token, while the
#      stage's `Status` is called 200 times; it prints how many abusive requests were
#      sent and refused, the status p50/p99 meanwhile and the controller's RSS growth.
# and, on the test bed through the controller, a log flood: every host writes numbered
# lines while `fleet logs <stage> -f` follows them (lines a second printed, latency from
# a line's write to its print, lines reported missed against lines that never arrived);
# and prints a table against the issues' targets (through the controller p99 under
# 50 ms at 1,000 hosts with controller RSS under 150 MB; over SSH to 20 hosts under
# 1.5 s; during the abuse, status p99 under 50 ms, RSS growth under 20 MB and every
# abusive request refused).
#
# Usage: bench/fleet/run.sh [--ssh-runs N] [--controller-runs N] [--scale-runs N] [--apps N] [--no-scale] [--no-build]
#   --ssh-runs N         timed `fleet status` runs per stage over SSH (default 20)
#   --controller-runs N  timed runs per stage through the controller (default 50)
#   --scale-runs N       runs of the 1,000-agent simulation; medians count (default 3)
#   --apps N             apps per test-bed host (default 10, as in the simulation)
#   --flood-rate N       lines a second each host writes in the log flood (default 1000)
#   --flood-seconds N    how long the flood lasts (default 10)
#   --no-scale           skip the 1,000-agent simulation, the abuse run and the rest
#   --ha-hosts N         simulated agents of the shared-store run (default 10000)
#   --no-build           use the existing release binaries (CLI, agent, controller and
#                        the controller's test binary)
#
# Needs root, the test bed's tools (deploy/testbed/README.md) and jq or python3. The bed
# claims a free bed number, its state dir lives in a private temporary directory; on
# exit, whatever happens, the bed is torn down (`testbed down`), the controller and the
# scale test are stopped, and any process still carrying this run's mark is killed.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME with a '.' separator

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=../lib.sh
source "$ROOT/bench/lib.sh"
TESTBED="$ROOT/deploy/testbed/testbed"
SCALE_RS="$ROOT/crates/controller/tests/it/scale.rs"
SCALE_TEST=scale::status_of_a_thousand_hosts_answers_within_50ms_p99
ABUSE_TEST=abuse::abuse_while_a_thousand_hosts_are_watched
SCRAPE_TEST=metrics::scrape_of_a_thousand_hosts
DASHBOARD_TEST=dashboard_bench::dashboard_of_a_thousand_hosts
HA_TEST=ha_bench::three_controllers_on_postgresql_beside_one_on_sqlite
HA_HOSTS=10000

HOSTS=20
FIVE=5
SSH_RUNS=20
CTL_RUNS=50
SCALE_RUNS=3
APPS=10
FLOOD_RATE=1000
FLOOD_SECONDS=10
WITH_SCALE=1
BUILD=1
while (($#)); do
  case "$1" in
    --ssh-runs) SSH_RUNS=${2:?--ssh-runs needs a number}; shift ;;
    --controller-runs) CTL_RUNS=${2:?--controller-runs needs a number}; shift ;;
    --scale-runs) SCALE_RUNS=${2:?--scale-runs needs a number}; shift ;;
    --apps) APPS=${2:?--apps needs a number}; shift ;;
    --flood-rate) FLOOD_RATE=${2:?--flood-rate needs a number}; shift ;;
    --flood-seconds) FLOOD_SECONDS=${2:?--flood-seconds needs a number}; shift ;;
    --no-scale) WITH_SCALE=0 ;;
    --ha-hosts) HA_HOSTS=${2:?--ha-hosts needs a number}; shift ;;
    --no-build) BUILD=0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
for v in "$SSH_RUNS" "$CTL_RUNS" "$SCALE_RUNS" "$APPS" "$FLOOD_RATE" "$FLOOD_SECONDS"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "--ssh-runs, --controller-runs, --scale-runs and --apps take positive integers" >&2; exit 2; }
done


(($(id -u) == 0)) || die "the test bed needs root (namespaces, bridges, mounts)"
command -v jq >/dev/null || command -v python3 >/dev/null || die "needs jq or python3 (to read --json output)"

# --- private state, set before anything can start ----------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fleet-bench-fleet.XXXXXX")
chmod 755 "$WORK" # the apps' script is run by the hosts' agents from here
BED="$WORK/bed"   # the test bed's state dir (testbed records its number there)
# Everything this run starts carries this mark in its environment (the bed's agents and
# apps too: they inherit testbed's environment), so cleanup can find stragglers by pid.
export FLEET_BENCH_MARK="$WORK"
export FLEET_HOME="$WORK/fleet-home" # never the user's own agent
unset FLEET_CONTROLLER FLEET_TOKEN FLEET_CA FLEET_CONFIG TESTBED_ID TESTBED_DIR

FLEET="$ROOT/target/release/fleet"
AGENT="$ROOT/target/release/fleet-agent"
CONTROLLER="$ROOT/target/release/fleet-controller"
CTL_PID=""
SCALE_PID=""
BED_UP=0

bed() { "$TESTBED" --dir "$BED" "$@"; }

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  # The scale test's controller is its child: stop it first, the test cannot any more.
  if pid_alive "$SCALE_PID"; then
    local c
    for c in $(pgrep -P "$SCALE_PID"); do kill -KILL "$c" 2>/dev/null; done
    kill -KILL "$SCALE_PID" 2>/dev/null
  fi
  pid_alive "$CTL_PID" && { kill -TERM "$CTL_PID" 2>/dev/null; sleep 0.3; kill -KILL "$CTL_PID" 2>/dev/null; }
  if ((BED_UP)) || [[ -f $BED/id ]]; then
    local id
    id=$(cat "$BED/id" 2>/dev/null || echo "?")
    bed down >"$WORK/down.log" 2>&1 || {
      cat "$WORK/down.log" >&2
      log "testbed down failed; run: $TESTBED down --id $id"
    }
  fi
  sweep_marked
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers -----------------------------------------------------------------
cpu_ticks() { local s; s=$(cut -d' ' -f14,15 "/proc/$1/stat" 2>/dev/null) || true; echo $((${s% *} + ${s#* })); }

# Entries of a `fleet status --json` array (on stdin) whose status is "online".
count_online() {
  if command -v jq >/dev/null; then
    jq '[.[] | select(.status == "online")] | length' 2>/dev/null || echo 0
  else
    python3 -c '
import json, sys
try: print(sum(1 for e in json.load(sys.stdin) if e.get("status") == "online"))
except Exception: print(0)'
  fi
}

# pctl <p> <file of numbers>: nearest-rank percentile ("-" when empty)
pctl() {
  sort -n "$2" | awk -v p="$1" '{ v[NR] = $1 } END {
    if (!NR) { print "-"; exit }
    r = p / 100 * NR; i = int(r); if (i < r) i++; if (i < 1) i = 1
    print v[i] }'
}
median() { printf '%s\n' "$@" | grep . >"$WORK/median.tmp" || true; pctl 50 "$WORK/median.tmp"; }

# wait_for <what> <seconds> <command...>: poll until the command succeeds.
wait_for() {
  local what=$1 until=$(($(now_us) + $2 * 1000000))
  shift 2
  until "$@" >/dev/null 2>&1; do
    (($(now_us) > until)) && { log "timed out waiting for $what"; return 1; }
    sleep 0.05
  done
}

# --- build -------------------------------------------------------------------
SCALE_BIN=""
if ((BUILD)); then
  build_fleet fleet-cli fleet-agent fleet-controller
  if ((WITH_SCALE)); then
    log "building the controller's test binary (release)"
    SCALE_BIN=$(cd "$ROOT" && cargo test -q -p fleet-controller --release --test it --no-run --message-format=json 2>/dev/null |
      grep '"kind":\["test"\]' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1) || true
    [[ -x $SCALE_BIN ]] || die "cargo test --no-run did not name the controller's test binary"
  fi
elif ((WITH_SCALE)); then
  # The newest controller test binary holding the scale test.
  for b in $(ls -t "$ROOT"/target/release/deps/it-* 2>/dev/null); do
    [[ -x $b && $b != *.d ]] && grep -q "${SCALE_TEST#scale::}" "$b" && { SCALE_BIN=$b; break; }
  done
  [[ -x $SCALE_BIN ]] || die "no release test binary of fleet-controller holds $SCALE_TEST (run without --no-build)"
fi
for b in "$FLEET" "$AGENT" "$CONTROLLER"; do
  [[ -x $b ]] || die "missing $b (run without --no-build)"
done
FLEET_VERSION=$("$FLEET" --version 2>/dev/null | head -1 || echo fleet)
# 1,000 TLS sessions need as many descriptors in the test and in the controller.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

T_START=$(now_us)
declare -A R # R[metric]

# --- the test bed --------------------------------------------------------------
log "test bed: $HOSTS hosts with the release agent"
t0=$(now_us)
BED_UP=1
bed up "$HOSTS" --agent "$AGENT" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; die "testbed up failed"; }
BED_ID=$(<"$BED/id")
R[bed_up_s]=$(awk -v us=$(($(now_us) - t0)) 'BEGIN { printf "%.1f", us / 1e6 }')
mapfile -t ADDR < <(awk '{ print $2 }' "$BED/hosts")
((${#ADDR[@]} == HOSTS)) || die "the bed lists ${#ADDR[@]} hosts, not $HOSTS"
BRIDGE="198.18.$BED_ID.254"
log "bed $BED_ID is up in ${R[bed_up_s]} s (bridge $BRIDGE)"

# The apps: N sleepers per host. $WORK is in /tmp, which every host shares.
mkdir -p "$WORK/apps" "$WORK/stage" "$FLEET_HOME"
printf '#!/bin/sh\nexec sleep 100000\n' >"$WORK/apps/idle.sh"
chmod 755 "$WORK/apps" "$WORK/apps/idle.sh"
for ((a = 1; a <= APPS; a++)); do
  printf '[apps.app-%02d]\nscript = "%s"\ninterpreter = "bash"\n\n' "$a" "$WORK/apps/idle.sh"
done >"$WORK/apps/fleet.toml"
log "starting $APPS apps on each host"
for ((i = 1; i <= HOSTS; i++)); do
  bed exec "h$i" -- "$FLEET" start "$WORK/apps/fleet.toml" >"$WORK/start-h$i.log" 2>&1 ||
    { cat "$WORK/start-h$i.log" >&2; die "fleet start on h$i failed"; }
done

# Two stages over the same hosts: `five` (h1..h5) and `twenty` (all).
quoted() { printf '"%s", ' "$@" | sed 's/, $//'; }
stage_toml() { # <name> <addresses...>
  local name=$1
  shift
  cat <<EOF
[deploy.$name]
host = [$(quoted "$@")]
user = "root"
key = "$BED/client_key"
ssh_options = ["UserKnownHostsFile=$BED/known_hosts", "ConnectTimeout=3"]
fleet_home = "/srv/fleet/home"
path = "/srv/app"

EOF
}
{
  stage_toml five "${ADDR[@]:0:FIVE}"
  stage_toml twenty "${ADDR[@]}"
} >"$WORK/stage/fleet.toml"
cd "$WORK/stage" # `fleet status <stage>` reads ./fleet.toml

# --- timed `fleet status` runs -------------------------------------------------
# status_run <out file> <stage>: one CLI process; the controller's variables, when set
# in CTL_ENV, are passed on the command line (no extra process on the timed path).
CTL_ENV=()
status_run() {
  if ((${#CTL_ENV[@]})); then
    FLEET_CONTROLLER=${CTL_ENV[0]} FLEET_TOKEN=${CTL_ENV[1]} FLEET_CA=${CTL_ENV[2]} \
      "$FLEET" status "$2" --json >"$1" 2>"$1.err"
  else
    "$FLEET" status "$2" --json >"$1" 2>"$1.err"
  fi
}

# all_online <stage> <hosts>: one run sees every app of every host online.
all_online() {
  local rc=0
  status_run "$WORK/check.json" "$1" || rc=$?
  ((rc == 0)) && (($(count_online <"$WORK/check.json") == $2 * APPS))
}

# measure <path> <runs>: alternate the two stages, one fresh CLI process a run; ms
# per run in $WORK/<path>-<stage>.ms, failed runs (exit code or a missing app) counted.
measure() {
  local path=$1 runs=$2 r stage n t0 t1 rc got
  for stage in five twenty; do : >"$WORK/$path-$stage.ms"; R[$path.$stage.failed]=0; done
  for ((r = 1; r <= runs; r++)); do
    for stage in five twenty; do
      [[ $stage == five ]] && n=$FIVE || n=$HOSTS
      rc=0
      t0=$EPOCHREALTIME
      status_run "$WORK/out.json" "$stage" || rc=$?
      t1=$EPOCHREALTIME
      awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", (b - a) * 1000 }' >>"$WORK/$path-$stage.ms"
      got=$(count_online <"$WORK/out.json")
      if ((rc != 0 || got != n * APPS)); then
        R[$path.$stage.failed]=$((${R[$path.$stage.failed]} + 1))
        log "$path $stage run $r: exit $rc, $got/$((n * APPS)) online: $(head -c 300 "$WORK/out.json.err")"
      fi
    done
  done
  for stage in five twenty; do
    R[$path.$stage.p50]=$(pctl 50 "$WORK/$path-$stage.ms")
    R[$path.$stage.p99]=$(pctl 99 "$WORK/$path-$stage.ms")
    R[$path.$stage.all]=$(paste -sd' ' "$WORK/$path-$stage.ms")
  done
}

log "over SSH: waiting for every app, then $SSH_RUNS runs per stage"
wait_for "every app online over SSH" 60 all_online twenty "$HOSTS" || die "the bed's apps are not all online"
all_online five "$FIVE" || true # warm-up of the smaller stage
measure ssh "$SSH_RUNS"

# --- the controller --------------------------------------------------------------
CTL_DATA="$WORK/controller"
mkdir -p "$CTL_DATA"
PORT=17443
while ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q .; do PORT=$((PORT + 1)); done
URL="https://$BRIDGE:$PORT"
TOKEN=$("$CONTROLLER" token create --name bench --role admin --data "$CTL_DATA" 2>"$WORK/token.err") || { cat "$WORK/token.err" >&2; die "token create failed"; }
[[ $TOKEN == fct_* ]] || die "token create printed '$TOKEN'"
log "controller on $BRIDGE:$PORT (heartbeat 5 s)"
"$CONTROLLER" --listen "$BRIDGE:$PORT" --data "$CTL_DATA" --heartbeat 5s \
  >"$WORK/controller.log" 2>&1 </dev/null &
CTL_PID=$!
port_open() { pid_alive "$CTL_PID" && [[ -f $CTL_DATA/ca.pem ]] && (exec 3<>"/dev/tcp/$BRIDGE/$PORT") 2>/dev/null; }
wait_for "the controller to listen" 20 port_open || { cat "$WORK/controller.log" >&2; die "the controller did not come up"; }

# Join every host's agent, then restart it (SIGTERM; its apps stay in its state file)
# with `fleet ping` inside the host so it reads its controller settings.
log "joining $HOSTS agents"
t0=$(now_us)
for ((i = 1; i <= HOSTS; i++)); do
  addr=${ADDR[i - 1]}
  join=$("$CONTROLLER" join-token "$addr" --data "$CTL_DATA" 2>"$WORK/join.err") && [[ -n $join ]] ||
    { cat "$WORK/join.err" >&2; die "join-token $addr failed"; }
  # The token goes in the agent's environment (nsenter passes it on), never in an argv.
  FLEET_JOIN_TOKEN=$join bed exec "h$i" -- "$AGENT" --home /srv/fleet/home join "$URL" --host "$addr" \
    --ca "$CTL_DATA/ca.pem" >"$WORK/join-h$i.log" 2>&1 || { cat "$WORK/join-h$i.log" >&2; die "join on h$i failed"; }
  pid=$(bed exec "h$i" -- cat /srv/fleet/home/agent.pid | tr -dc '0-9')
  [[ -n $pid ]] || die "no agent.pid on h$i"
  kill -TERM "$pid"
  wait_for "h$i's agent to stop" 20 bash -c "! kill -0 $pid" || die "h$i's agent did not stop"
  bed exec "h$i" -- "$FLEET" ping >"$WORK/ping-h$i.log" 2>&1 || { cat "$WORK/ping-h$i.log" >&2; die "fleet ping on h$i failed"; }
  wait_for "h$i's agent socket" 20 bed exec "h$i" -- test -S /srv/fleet/home/agent.sock || die "h$i's agent did not start"
done
R[join_s]=$(awk -v us=$(($(now_us) - t0)) 'BEGIN { printf "%.1f", us / 1e6 }')

CTL_ENV=("$URL" "$TOKEN" "$CTL_DATA/ca.pem")
log "through the controller: waiting for every host, then $CTL_RUNS runs per stage"
wait_for "every app online through the controller" 60 all_online twenty "$HOSTS" ||
  die "not every app is online through the controller: $(head -c 500 "$WORK/check.json.err")"
all_online five "$FIVE" || true
c0=$(cpu_ticks "$CTL_PID") t0=$(now_us)
measure ctl "$CTL_RUNS"
R[ctl20.cpu_pct]=$(awk -v t=$(($(cpu_ticks "$CTL_PID") - c0)) -v hz="$CLK_TCK" -v us=$(($(now_us) - t0)) \
  'BEGIN { printf "%.1f", 100 * t / hz / (us / 1e6) }')
R[ctl20.rss_kb]=$(rss_kb "$CTL_PID")

# --- a log flood through the controller ----------------------------------------
# Every host floods FLOOD_RATE numbered lines a second for FLOOD_SECONDS while `fleet
# logs twenty flood -f --json` follows them through the controller; flood_reader.py
# starts the flood once it hears every host, times each line from its write on the host
# to its arrival here (one clock: the hosts are namespaces), and compares the lines the
# stream reported missed with those that never arrived.
log "flood: $HOSTS hosts x $FLOOD_RATE lines/s for $FLOOD_SECONDS s through the controller"
GO="$WORK/flood.go"
install -m 755 "$HERE/flood.py" "$WORK/apps/flood.py"
printf '[apps.flood]\nscript = "%s"\ninterpreter = "python3"\nargs = ["%s", "%s", "%s"]\n' \
  "$WORK/apps/flood.py" "$GO" "$FLOOD_RATE" "$FLOOD_SECONDS" >"$WORK/apps/flood.toml"
for ((i = 1; i <= HOSTS; i++)); do
  bed exec "h$i" -- "$FLEET" start "$WORK/apps/flood.toml" >"$WORK/flood-h$i.log" 2>&1 ||
    { cat "$WORK/flood-h$i.log" >&2; die "starting the flood on h$i failed"; }
done
mkfifo "$WORK/flood.fifo"
FLEET_CONTROLLER=${CTL_ENV[0]} FLEET_TOKEN=${CTL_ENV[1]} FLEET_CA=${CTL_ENV[2]} \
  "$FLEET" logs twenty flood -f --json --lines 0 >"$WORK/flood.fifo" 2>"$WORK/flood.err" &
FLOOD_LOGS=$!
python3 "$HERE/flood_reader.py" "$HOSTS" $((FLOOD_SECONDS + 90)) "$GO" <"$WORK/flood.fifo" >"$WORK/flood.out" || true
# The follower never ends on its own (`-f`): the reader is done with it.
kill "$FLOOD_LOGS" 2>/dev/null || true
wait "$FLOOD_LOGS" 2>/dev/null || true
line=$(grep '^flood: ' "$WORK/flood.out" || true)
if [[ $line =~ wrote\ ([0-9]+)\ received\ ([0-9]+).*\(([0-9]+)\ lines/s\),\ p50\ ([0-9.-]+)\ ms\ p99\ ([0-9.-]+)\ ms,\ missed\ reported\ ([0-9]+)\ actual\ (-?[0-9]+) ]]; then
  R[flood.written]=${BASH_REMATCH[1]}
  R[flood.received]=${BASH_REMATCH[2]}
  R[flood.rate]=${BASH_REMATCH[3]}
  R[flood.p50]=${BASH_REMATCH[4]}
  R[flood.p99]=${BASH_REMATCH[5]}
  R[flood.reported]=${BASH_REMATCH[6]}
  R[flood.actual]=${BASH_REMATCH[7]}
else
  log "the flood printed no figures:"; cat "$WORK/flood.out" "$WORK/flood.err" >&2
fi
CTL_ENV=()

# The bed and its controller go before the simulation, so they take no CPU from it.
log "tearing the bed down"
kill -TERM "$CTL_PID" 2>/dev/null || true
wait_for "the controller to stop" 10 bash -c "! kill -0 $CTL_PID" || kill -KILL "$CTL_PID" 2>/dev/null || true
CTL_PID=""
cd "$WORK"
bed down >"$WORK/down.log" 2>&1 || { cat "$WORK/down.log" >&2; die "testbed down failed"; }
BED_UP=0

# --- 1,000 simulated agents ------------------------------------------------------
# One run of the scale test, its controller sampled every 50 ms. Phases are told apart
# by the lines the test prints: joins until "agents joined", then the status calls
# until "status of". Sets R[scale.<run>.*].
scale_run() {
  local r=$1 out="$WORK/scale-$r.log" samples="$WORK/scale-$r.samples"
  local cpid="" c line t ticks rss hwm joined="" done_=""
  : >"$samples"
  (cd "$ROOT/crates/controller" && exec "$SCALE_BIN" --ignored --exact --nocapture "$SCALE_TEST") \
    >"$out" 2>&1 </dev/null &
  SCALE_PID=$!
  while pid_alive "$SCALE_PID"; do
    if [[ -z $cpid ]]; then
      for c in $(pgrep -P "$SCALE_PID" 2>/dev/null); do
        [[ $(readlink "/proc/$c/exe" 2>/dev/null) == "$CONTROLLER" ]] && cpid=$c
      done
    fi
    if [[ -n $cpid ]] && read -r line 2>/dev/null <"/proc/$cpid/stat"; then
      t=$(now_us)
      line=${line##*") "} # fields from the 3rd on: utime is the 14th, stime the 15th
      read -r -a f <<<"$line"
      ticks=$((f[11] + f[12]))
      rss=0 hwm=0
      while read -r k v _; do
        case $k in VmRSS:) rss=$v ;; VmHWM:) hwm=$v ;; esac
      done 2>/dev/null <"/proc/$cpid/status" || true
      [[ -z $joined ]] && grep -q 'agents joined' "$out" && joined=1 && echo "joined" >>"$samples"
      [[ -z $done_ ]] && grep -q '^status of ' "$out" && done_=1 && echo "done" >>"$samples"
      ((rss > 0)) && echo "$t $ticks $rss $hwm" >>"$samples"
    fi
    sleep 0.05
  done
  wait "$SCALE_PID" && R[scale.$r.rc]=0 || R[scale.$r.rc]=$?
  SCALE_PID=""
  # status of 1000 hosts x 10 processes: p50 13.0ms, p99 32.7ms; controller RSS 66 MB (10 MB before the agents)
  line=$(grep '^status of ' "$out" | head -1 || true)
  ms() { # a Rust Duration's Debug form -> ms
    awk -v d="$1" 'BEGIN { v = d + 0; u = d; sub(/^[0-9.]+/, "", u)
      if (u == "ns") v /= 1e6; else if (u == "µs" || u == "us") v /= 1e3; else if (u == "s") v *= 1e3
      else if (u != "ms") { print "-"; exit } printf "%.2f\n", v }'
  }
  if [[ $line =~ p50\ ([^,]+),\ p99\ ([^;]+)\; ]]; then
    R[scale.$r.p50]=$(ms "${BASH_REMATCH[1]}")
    R[scale.$r.p99]=$(ms "${BASH_REMATCH[2]}")
  else
    log "scale run $r printed no figures (exit ${R[scale.$r.rc]}):"
    tail -n 20 "$out" >&2
  fi
  [[ $line =~ controller\ RSS\ ([0-9]+)\ MB ]] && R[scale.$r.test_rss_mb]=${BASH_REMATCH[1]}
  line=$(grep -o 'agents joined and connected in [^ ]*' "$out" | head -1 || true)
  [[ -n $line ]] && R[scale.$r.join_ms]=$(ms "${line##* }")
  # From the samples: CPU per phase, RSS at the end of the status calls, peak RSS.
  awk -v hz="$CLK_TCK" '
    $1 == "joined" { phase = 1; next }
    $1 == "done" { phase = 2; next }
    { if (!n++) { t0 = $1; c0 = $2 }
      if (phase == 0 || !tj) { tj = $1; cj = $2 }
      if (phase < 2 || !td) { td = $1; cd = $2; rss = $3 }
      hwm = $4 }
    END {
      if (n < 2) exit
      printf "join_cpu_s=%.2f join_wall_s=%.2f ", (cj - c0) / hz, (tj - t0) / 1e6
      if (td > tj) printf "status_cpu_pct=%.0f status_wall_s=%.2f ", 100 * (cd - cj) / hz / ((td - tj) / 1e6), (td - tj) / 1e6
      printf "rss_kb=%d hwm_kb=%d\n", rss, hwm
    }' "$samples" >"$WORK/scale-$r.sum"
  local kv
  for kv in $(<"$WORK/scale-$r.sum"); do R[scale.$r.${kv%%=*}]=${kv#*=}; done
}

if ((WITH_SCALE)); then
  S_HOSTS=$(sed -n 's/^\(pub \)\{0,1\}const HOSTS: usize = \([0-9_]*\);/\2/p' "$SCALE_RS" | tr -d _)
  S_PROCS=$(sed -n 's/^const PROCESSES_PER_HOST: u32 = \([0-9_]*\);/\1/p' "$SCALE_RS" | tr -d _)
  S_CALLS=$(sed -n 's/^const STATUS_CALLS: usize = \([0-9_]*\);/\1/p' "$SCALE_RS" | tr -d _)
  for ((r = 1; r <= SCALE_RUNS; r++)); do
    log "${S_HOSTS:-?} simulated agents x ${S_PROCS:-?} apps: run $r/$SCALE_RUNS"
    scale_run "$r"
  done
  vals() { local r; for ((r = 1; r <= SCALE_RUNS; r++)); do echo "${R[scale.$r.$1]:-}"; done; }
  for m in p50 p99 rss_kb hwm_kb join_ms join_cpu_s status_cpu_pct status_wall_s; do
    R[scale.$m]=$(median $(vals "$m"))
  done
  R[scale.hwm_max_kb]=$(vals hwm_kb | grep . | sort -n | tail -1 || true)
  R[scale.p99_max]=$(vals p99 | grep . | sort -n | tail -1 || true)
  [[ -n ${R[scale.hwm_max_kb]} ]] || R[scale.hwm_max_kb]=-
  [[ -n ${R[scale.p99_max]} ]] || R[scale.p99_max]=-
fi

# --- abuse ---------------------------------------------------------------------
# abuse: 200 join abusers sent 5000, refused 5000; 50 revoked-token clients sent 900, refused 900
# abuse: status of 1000 hosts during the abuse: p50 13ms, p99 30ms; controller RSS 60 MB before, peak 70 MB (growth 10 MB)
if ((WITH_SCALE)); then
  log "abuse: 200 unauthenticated Join clients and 50 revoked-token clients against 1,000 agents"
  (cd "$ROOT/crates/controller" && exec "$SCALE_BIN" --ignored --exact --nocapture "$ABUSE_TEST") \
    >"$WORK/abuse.log" 2>&1 </dev/null &
  SCALE_PID=$!
  wait "$SCALE_PID" && R[abuse.rc]=0 || R[abuse.rc]=$?
  SCALE_PID=""
  line=$(grep '^abuse: .*join abusers' "$WORK/abuse.log" | head -1 || true)
  if [[ $line =~ sent\ ([0-9]+),\ refused\ ([0-9]+)\;.*sent\ ([0-9]+),\ refused\ ([0-9]+) ]]; then
    R[abuse.joins]="${BASH_REMATCH[2]} of ${BASH_REMATCH[1]}"
    R[abuse.revoked]="${BASH_REMATCH[4]} of ${BASH_REMATCH[3]}"
    R[abuse.all_refused]=$(( BASH_REMATCH[1] == BASH_REMATCH[2] && BASH_REMATCH[3] == BASH_REMATCH[4] ))
  fi
  line=$(grep '^abuse: status of' "$WORK/abuse.log" | head -1 || true)
  if [[ $line =~ p50\ ([^,]+),\ p99\ ([^;]+)\; ]]; then
    R[abuse.p50]=$(ms "${BASH_REMATCH[1]}")
    R[abuse.p99]=$(ms "${BASH_REMATCH[2]}")
  fi
  [[ $line =~ growth\ ([0-9]+)\ MB ]] && R[abuse.growth_mb]=${BASH_REMATCH[1]}
  [[ $line =~ ([0-9]+)\ MB\ before ]] && R[abuse.before_mb]=${BASH_REMATCH[1]}
  line=$(grep '^abuse: [0-9]* CPUs' "$WORK/abuse.log" | head -1 || true)
  R[abuse.cpus]=${line#abuse: }
  [[ -n ${R[abuse.p99]:-} ]] || { log "the abuse run printed no figures (exit ${R[abuse.rc]}):"; tail -n 20 "$WORK/abuse.log" >&2; }
fi

# --- /metrics scrape -----------------------------------------------------------
# scrape: 1000 hosts x 10 instances: 54059 series, 4238 KB; p50 38.9ms, max 107.7ms over 20 scrapes (2 CPUs, ...)
if ((WITH_SCALE)); then
  log "scrape: /metrics of 1,000 agents x 10 instances (crates/controller/tests/it/metrics.rs)"
  (cd "$ROOT/crates/controller" && exec "$SCALE_BIN" --ignored --exact --nocapture "$SCRAPE_TEST") \
    >"$WORK/scrape.log" 2>&1 </dev/null &
  SCALE_PID=$!
  wait "$SCALE_PID" && R[scrape.rc]=0 || R[scrape.rc]=$?
  SCALE_PID=""
  line=$(grep '^scrape: ' "$WORK/scrape.log" | head -1 || true)
  if [[ $line =~ ([0-9]+)\ series,\ ([0-9]+)\ KB\;\ p50\ ([^,]+),\ max\ ([^ ]+) ]]; then
    R[scrape.series]=${BASH_REMATCH[1]}
    R[scrape.kb]=${BASH_REMATCH[2]}
    R[scrape.p50]=$(ms "${BASH_REMATCH[3]}")
    R[scrape.max]=$(ms "${BASH_REMATCH[4]}")
  fi
  [[ $line =~ \(([0-9]+\ CPUs) ]] && R[scrape.cpus]=${BASH_REMATCH[1]}
  [[ -n ${R[scrape.p50]:-} ]] || { log "the scrape run printed no figures (exit ${R[scrape.rc]}):"; tail -n 20 "$WORK/scrape.log" >&2; }
fi

# --- web dashboard -----------------------------------------------------------
# dashboard: first render p50 412 ms, max 480 ms over 5 loads of 1000 hosts; pushed to one
# dashboard: steady 9000 B/s, fleet-wide restart 90000 B/s; 10 dashboards: controller CPU
# 12.3% of a core, RSS 80 MB (70 MB before) (2 CPUs, ...)
if ((WITH_SCALE)); then
  if command -v chromium >/dev/null; then
    log "dashboard: 1,000 agents, headless Chromium (crates/controller/tests/it/dashboard_bench.rs)"
    (cd "$ROOT/crates/controller" && exec "$SCALE_BIN" --ignored --exact --nocapture "$DASHBOARD_TEST") \
      >"$WORK/dashboard.log" 2>&1 </dev/null &
    SCALE_PID=$!
    wait "$SCALE_PID" && R[dash.rc]=0 || R[dash.rc]=$?
    SCALE_PID=""
    line=$(grep '^dashboard: ' "$WORK/dashboard.log" | head -1 || true)
    [[ $line =~ first\ render\ p50\ ([0-9]+)\ ms,\ max\ ([0-9]+)\ ms ]] && { R[dash.p50]=${BASH_REMATCH[1]}; R[dash.max]=${BASH_REMATCH[2]}; }
    [[ $line =~ steady\ ([0-9]+)\ B/s,\ fleet-wide\ restart\ ([0-9]+)\ B/s ]] && { R[dash.steady]=${BASH_REMATCH[1]}; R[dash.restart]=${BASH_REMATCH[2]}; }
    [[ $line =~ CPU\ ([0-9.]+)%\ of\ a\ core,\ RSS\ ([0-9]+)\ MB\ \(([0-9]+)\ MB\ before ]] && { R[dash.cpu]=${BASH_REMATCH[1]}; R[dash.rss]=${BASH_REMATCH[2]}; R[dash.rss_before]=${BASH_REMATCH[3]}; }
    [[ $line =~ \(([0-9]+\ CPUs) ]] && R[dash.cpus]=${BASH_REMATCH[1]}
    [[ -n ${R[dash.p50]:-} ]] || { log "the dashboard run printed no figures (exit ${R[dash.rc]}):"; tail -n 20 "$WORK/dashboard.log" >&2; }
  else
    log "dashboard: skipped (no chromium; apt-get install chromium)"
  fi
fi

# --- controllers sharing a store ---------------------------------------------
# Prints its own table (`| store | ...`), shown after the report.
if ((WITH_SCALE)); then
  if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    log "controllers on one PostgreSQL: $HA_HOSTS simulated agents (crates/controller/tests/it/ha_bench.rs)"
    # 10,000 sessions in the simulation's process and in each controller's.
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    (cd "$ROOT/crates/controller" && FLEET_BENCH_HOSTS=$HA_HOSTS exec "$SCALE_BIN" --ignored --exact --nocapture "$HA_TEST") \
      >"$WORK/ha.log" 2>&1 </dev/null &
    SCALE_PID=$!
    wait "$SCALE_PID" && R[ha.rc]=0 || R[ha.rc]=$?
    SCALE_PID=""
    grep -q '^| PostgreSQL' "$WORK/ha.log" || { log "the store run printed no figures (exit ${R[ha.rc]}):"; tail -n 20 "$WORK/ha.log" >&2; }
  else
    log "controllers on one PostgreSQL: skipped (no postgresql; apt-get install postgresql)"
  fi
fi

# --- report ------------------------------------------------------------------
get() { echo "${R[$1]:--}"; }
ok() { if [[ $1 != *-* && $1 != *n/a* ]] && awk "BEGIN { exit !($1) }" 2>/dev/null; then echo PASS; else echo FAIL; fi; }
lat() { # <path> <stage> <runs>
  local f=${R[$1.$2.failed]:-0}
  echo "p50 $(get "$1.$2.p50") / p99 $(get "$1.$2.p99")$( ((f)) && echo ", $f/$3 runs FAILED")"
}
secs() { [[ $1 == - ]] && echo - || awk -v m="$1" 'BEGIN { printf "%.1f", m / 1000 }'; }
mb() { [[ ${R[$1]:-} && ${R[$1]} != - ]] && kb_to_mb "${R[$1]}" || echo -; }

ROWS=()
row() { ROWS+=("$1|$2|$3|$4"); }
row "status via SSH, $FIVE hosts, ms ($SSH_RUNS runs)" "$(lat ssh five "$SSH_RUNS")" "-" "info"
row "status via SSH, $HOSTS hosts, ms ($SSH_RUNS runs)" "$(lat ssh twenty "$SSH_RUNS")" "p99 < 1500" \
  "$( ((${R[ssh.twenty.failed]:-0})) && echo FAIL || ok "$(get ssh.twenty.p99) < 1500")"
row "status via controller, $FIVE hosts, ms ($CTL_RUNS runs)" "$(lat ctl five "$CTL_RUNS")" "-" "info"
row "status via controller, $HOSTS hosts, ms ($CTL_RUNS runs)" "$(lat ctl twenty "$CTL_RUNS")" "-" "info"
row "controller with $HOSTS agents: RSS MB / CPU during runs" "$(mb ctl20.rss_kb) MB / $(get ctl20.cpu_pct)% of a core" "-" "info"
row "log flood, $HOSTS hosts x $FLOOD_RATE lines/s: lines/s printed ($(get flood.received) of $(get flood.written))" "$(get flood.rate)" "-" "info"
row "log flood: write-to-print latency p50 / p99, ms" "$(get flood.p50) / $(get flood.p99)" "p99 < 250" "$(ok "$(get flood.p99) < 250")"
row "log flood: lines reported missed / actually missed" "$(get flood.reported) / $(get flood.actual)" "equal" \
  "$([[ ${R[flood.reported]:-x} == "${R[flood.actual]:-y}" ]] && echo PASS || echo FAIL)"
if ((WITH_SCALE)); then
  row "status via controller, ${S_HOSTS:-?} simulated hosts, ms (gRPC, ${S_CALLS:-?} calls)" \
    "p50 $(get scale.p50) / p99 $(get scale.p99) (worst p99 $(get scale.p99_max))" "p99 < 50" "$(ok "$(get scale.p99) < 50")"
  row "controller RSS, ${S_HOSTS:-?} agents x ${S_PROCS:-?} apps, MB" \
    "$(mb scale.rss_kb) (peak $(mb scale.hwm_max_kb))" "< 150" "$(ok "$(mb scale.hwm_max_kb) < 150")"
  row "controller CPU, ${S_HOSTS:-?} joins" "$(get scale.join_cpu_s) s CPU in $(secs "$(get scale.join_ms)") s" "-" "info"
  row "controller CPU, status calls + heartbeats" "$(get scale.status_cpu_pct)% of a core" "-" "info"
  row "abuse: status p50 / p99 during it, ms ($(get abuse.cpus))" "$(get abuse.p50) / $(get abuse.p99)" "p99 < 50" "$(ok "$(get abuse.p99) < 50")"
  row "abuse: controller RSS growth, MB (from $(get abuse.before_mb))" "$(get abuse.growth_mb)" "< 20" "$(ok "$(get abuse.growth_mb) < 20")"
  row "/metrics scrape, 1,000 hosts x 10 apps: p50 / max ms ($(get scrape.cpus))" \
    "$(get scrape.p50) / $(get scrape.max) ($(get scrape.series) series, $(get scrape.kb) KB)" "p50 < 100" "$(ok "$(get scrape.p50) < 100")"
  row "dashboard, 1,000 hosts: first render in Chromium p50 / max, ms ($(get dash.cpus))" \
    "$(get dash.p50) / $(get dash.max)" "< 1000" "$(ok "$(get dash.max) < 1000")"
  row "dashboard: bytes/s to one dashboard, steady / fleet-wide restart" "$(get dash.steady) / $(get dash.restart)" "-" "info"
  row "dashboard: controller CPU / RSS with 10 dashboards open" \
    "$(get dash.cpu)% of a core / $(get dash.rss) MB (from $(get dash.rss_before))" "-" "info"
  row "abuse: joins refused / revoked-token calls refused" "$(get abuse.joins) / $(get abuse.revoked)" "all" \
    "$( [[ ${R[abuse.all_refused]:-0} == 1 ]] && echo PASS || echo FAIL)"
else
  row "status via controller, 1,000 simulated hosts" "not run (--no-scale)" "p99 < 50" "n/a"
  row "controller RSS, 1,000 agents" "not run (--no-scale)" "< 150" "n/a"
fi

echo
echo "fleet status benchmark: test bed of $HOSTS hosts x $APPS apps, $(nproc) CPUs, $(uname -sr); $FLEET_VERSION"
echo "p50/p99 are nearest-rank over the runs (with 20 or 50 runs, p99 is the slowest run)"
echo
print_table "measurement|result|target|verdict" "${ROWS[@]}"
echo
echo "raw:"
echo "  bed up ${R[bed_up_s]} s; $HOSTS agents joined and restarted in ${R[join_s]} s"
for p in ssh ctl; do
  for s in five twenty; do
    printf '  %-3s %-6s ms per run: %s\n' "$p" "$s" "$(get "$p.$s.all")"
  done
done
if ((WITH_SCALE)); then
  beats=$(awk -v h="${S_HOSTS:-0}" -v c="${S_CALLS:-0}" -v s="$(get scale.status_wall_s)" \
    'BEGIN { if (s + 0 > 0 && h > 0) printf "%.0f", h / 5 * c / s; else print "-" }')
  echo "  scale test: $SCALE_TEST ($S_CALLS Status calls; binary $(basename "$SCALE_BIN"))"
  for ((r = 1; r <= SCALE_RUNS; r++)); do
    printf '  run %d: exit %s; p50 %s ms, p99 %s ms; joins %s s (%s s CPU); status phase %s s at %s%% of a core; RSS %s MB at the end of the calls (test says %s MB), peak %s MB\n' \
      "$r" "$(get "scale.$r.rc")" "$(get "scale.$r.p50")" "$(get "scale.$r.p99")" "$(secs "$(get "scale.$r.join_ms")")" \
      "$(get "scale.$r.join_cpu_s")" "$(get "scale.$r.status_wall_s")" "$(get "scale.$r.status_cpu_pct")" \
      "$(mb "scale.$r.rss_kb")" "$(get "scale.$r.test_rss_mb")" "$(mb "scale.$r.hwm_kb")"
  done
  echo "  during the status calls the test sends ${beats} heartbeats/s (a fifth of the agents per call);"
  echo "  ${S_HOSTS:-?} agents beating every 5 s would send $(( ${S_HOSTS:-0} / 5 ))/s"
fi
if [[ -s ${WORK}/ha.log ]]; then
  echo
  grep -E '^(controllers sharing|\||targets:)' "$WORK/ha.log" || true
fi
echo "  total bench time: $((($(now_us) - T_START) / 1000000)) s"
