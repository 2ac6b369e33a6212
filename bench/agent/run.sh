#!/usr/bin/env bash
# bench/agent/run.sh: fleet's agent against PM2, side by side, in one run.
#
# Measures, for each tool:
#   1. daemon RSS when idle (right after `ping`),
#   2. wall time of `start <config>` for N apps (default 100): until the command
#      returns, and until `list` reports all N online,
#   3. daemon RSS with the N apps running,
#   4. crash-to-restart latency with restart_delay = 0 (median and max over
#      several crash cycles).
# and prints a table against the issue's targets (agent RSS <= 10 MB with 100
# apps, start >= 5x faster than PM2, restart latency < 20 ms).
#
# Usage: bench/agent/run.sh [--fleet-only] [--apps N] [--runs N] [--cycles N] [--no-build]
#        bench/agent/run.sh --soak [MINUTES]   (bench/agent/soak.sh: leaks over a busy life)
#   --fleet-only  skip PM2 (no node/npm needed)
#   --apps N      apps in the start test (default 100)
#   --runs N      start/delete rounds; times are the median (default 3)
#   --cycles N    crash cycles for the restart latency (default 10)
#   --no-build    use the existing target/release binaries
#
# PM2 is installed from npm into bench/.cache/pm2 (git-ignored) and runs with a
# private PM2_HOME; fleet runs with a private FLEET_HOME. Both daemons and every
# app are stopped on exit, whatever happens.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME with a '.' separator

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE="$ROOT/bench/.cache"
# shellcheck source=../lib.sh
source "$ROOT/bench/lib.sh"

N_APPS=100
CYCLES=10
RUNS=3
WITH_PM2=1
BUILD=1
while (($#)); do
  case "$1" in
    --fleet-only) WITH_PM2=0 ;;
    --soak) shift; exec bash "$HERE/soak.sh" --minutes "${1:-10}" ;;
    --apps) N_APPS=${2:?--apps needs a number}; shift ;;
    --cycles) CYCLES=${2:?--cycles needs a number}; shift ;;
    --runs) RUNS=${2:?--runs needs a number}; shift ;;
    --no-build) BUILD=0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
for v in "$N_APPS" "$CYCLES" "$RUNS"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "--apps, --cycles and --runs take positive integers" >&2; exit 2; }
done


# --- private homes, set before any pm2 or fleet command can run ---------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fleet-bench.XXXXXX")
export PM2_HOME="$WORK/pm2-home"
export FLEET_HOME="$WORK/fleet-home"
# Everything this run starts carries this mark in its environment, so cleanup
# can find stragglers by pid without touching anyone else's processes.
export FLEET_BENCH_MARK="$WORK"
unset FLEET_CONTROLLER FLEET_TOKEN PM2_PUBLIC_KEY PM2_SECRET_KEY
export PM2_DISCRETE_MODE=true # no "PM2 welcome" banner

FLEET="$ROOT/target/release/fleet"
PM2=""


install_cleanup

# --- helpers -----------------------------------------------------------------

# Count entries of a JSON array on stdin whose status (a jq path) is "online".
count_online() {
  local path=$1
  if command -v jq >/dev/null; then
    jq "[.[] | select($path == \"online\")] | length" 2>/dev/null
  elif command -v python3 >/dev/null; then
    python3 -c '
import json, sys
keys = sys.argv[1].lstrip(".").split(".")
def get(o):
    for k in keys: o = (o or {}).get(k)
    return o
try: print(sum(1 for e in json.load(sys.stdin) if get(e) == "online"))
except Exception: print(0)' "$path"
  else
    node -e '
const keys = process.argv[1].replace(/^\./, "").split(".");
let s = ""; process.stdin.on("data", d => s += d).on("end", () => {
  try { console.log(JSON.parse(s).filter(e => keys.reduce((o, k) => o && o[k], e) === "online").length); }
  catch (_) { console.log(0); }
});' "$path"
  fi
}
online_pm2() { local c; c=$(timeout 20 "$PM2" jlist 2>/dev/null | count_online '.pm2_env.status') || true; echo "${c:-0}"; }
online_fleet() { local c; c=$(timeout 20 "$FLEET" list --json 2>/dev/null | count_online '.status') || true; echo "${c:-0}"; }
count_starts() { local c; c=$(grep -c '^start' "$1" 2>/dev/null) || true; echo "${c:-0}"; }

# wait_online <tool> <n> <deadline seconds>: poll until n apps are online.
wait_online() {
  local tool=$1 n=$2 until=$(($(now_us) + $3 * 1000000)) c
  while :; do
    c=$("online_$tool")
    ((c >= n)) && return 0
    (($(now_us) > until)) && { log "$tool: only $c/$n apps online after $3 s"; return 1; }
    sleep 0.02
  done
}

# wait_pidfile <file> <deadline seconds>: echo the live pid written in file.
wait_pidfile() {
  local f=$1 until=$(($(now_us) + $2 * 1000000)) p
  while (($(now_us) <= until)); do
    p=$({ tr -dc '0-9' <"$f"; } 2>/dev/null || true)
    pid_alive "$p" && { echo "$p"; return 0; }
    sleep 0.05
  done
  return 1
}

# --- build and install -------------------------------------------------------
if ((BUILD)); then
  build_fleet fleet-cli fleet-agent
fi
[[ -x $FLEET && -x $ROOT/target/release/fleet-agent ]] || die "missing $FLEET or fleet-agent (run without --no-build)"

if ((WITH_PM2)); then
  install_pm2
fi
FLEET_VERSION=$("$FLEET" --version 2>/dev/null | head -1 || echo fleet)

# --- apps and configs --------------------------------------------------------
mkdir -p "$WORK/apps" "$PM2_HOME" "$FLEET_HOME"
APP="$WORK/apps/idle.sh"
printf '#!/bin/sh\nexec sleep 100000\n' >"$APP"
chmod +x "$APP"
name() { printf 'app-%03d' "$1"; }

{
  echo 'module.exports = { apps: ['
  for ((i = 1; i <= N_APPS; i++)); do
    printf '  { name: "%s", script: "%s", interpreter: "bash", autorestart: true },\n' "$(name "$i")" "$APP"
  done
  echo '] };'
} >"$WORK/apps/ecosystem.config.js"
{
  for ((i = 1; i <= N_APPS; i++)); do
    printf '[apps.%s]\nscript = "%s"\ninterpreter = "bash"\n\n' "$(name "$i")" "$APP"
  done
} >"$WORK/apps/fleet.toml"

# crash app: stamps its start and exit (microseconds, no fork), lives 1.2 s
# (longer than min_uptime, so it is never "errored"), exits 1.
make_crash() { # <tool>
  local dir="$WORK/crash-$1"
  mkdir -p "$dir"
  cat >"$dir/crash.sh" <<EOF
#!/bin/bash
t=\$EPOCHREALTIME; echo "start \${t/./}" >>"$dir/stamps"
sleep 1.2
t=\$EPOCHREALTIME; echo "exit \${t/./}" >>"$dir/stamps"
exit 1
EOF
  chmod +x "$dir/crash.sh"
  cat >"$dir/ecosystem.config.js" <<EOF
module.exports = { apps: [{ name: "crash", script: "$dir/crash.sh", interpreter: "bash",
  autorestart: true, restart_delay: 0, min_uptime: 500, max_restarts: 1000 }] };
EOF
  cat >"$dir/fleet.toml" <<EOF
[apps.crash]
script = "$dir/crash.sh"
interpreter = "bash"
autorestart = true
restart_delay = 0
min_uptime = 500
max_restarts = 1000
EOF
}

# median <numbers...>: "-" when there are none
median() {
  printf '%s\n' "$@" | { grep . || true; } | sort -n |
    awk '{ v[NR] = $1 } END { if (!NR) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else { m = (v[NR / 2] + v[NR / 2 + 1]) / 2; if (m == int(m)) print m; else printf "%.2f\n", m } }'
}

# latencies <stamps file>: one line per restart, ms with 2 decimals
latencies() {
  awk '$1 == "exit" { e = $2 } $1 == "start" && e { printf "%.2f\n", ($2 - e) / 1000; e = 0 }' "$1"
}

# --- the measurement, identical for both tools -------------------------------
declare -A R # R[tool.metric]

bench_tool() { # <pm2|fleet>
  local tool=$1 bin cfg pidfile pid t0 n
  if [[ $tool == pm2 ]]; then bin=$PM2 cfg=ecosystem.config.js pidfile="$PM2_HOME/pm2.pid"
  else bin=$FLEET cfg=fleet.toml pidfile="$FLEET_HOME/agent.pid"; fi

  log "$tool: starting the daemon"
  timeout 30 "$bin" ping >/dev/null || die "$tool ping failed"
  pid=$(wait_pidfile "$pidfile" 10) || die "$tool: no live pid in $pidfile"
  sleep 1 # let it settle
  R[$tool.idle_kb]=$(rss_kb "$pid")

  local r starts=() onlines=() lists=() rsss=() cpus=() kb b0
  for ((r = 1; r <= RUNS; r++)); do
    log "$tool: starting $N_APPS apps from $cfg (run $r/$RUNS)"
    b0=$(busy_jiffies)
    t0=$(now_us)
    timeout 120 "$bin" start "$WORK/apps/$cfg" >"$WORK/$tool-start.out" 2>&1 ||
      { cat "$WORK/$tool-start.out" >&2; die "$tool start failed"; }
    starts+=("$(ms_since "$t0")")
    wait_online "$tool" "$N_APPS" 60 || die "$tool: apps did not come online"
    onlines+=("$(ms_since "$t0")")
    cpus+=($((($(busy_jiffies) - b0) * 1000 / CLK_TCK)))
    t0=$(now_us)
    n=$("online_$tool")
    lists+=("$(ms_since "$t0")")
    ((n == N_APPS)) || log "$tool: warning: $n/$N_APPS online at second look"
    pid_alive "$pid" || die "$tool: daemon pid $pid is gone"
    sleep 2 # let it settle with the apps running
    kb=$(rss_kb "$pid")
    rsss+=("$kb")
    ((r == 1)) && R[$tool.busy_kb]=$kb # a fresh daemon with the apps; later runs show growth
    timeout 60 "$bin" delete all >/dev/null 2>&1 || log "$tool: delete all failed"
    sleep 0.5
  done
  R[$tool.start_ms]=$(median "${starts[@]}")
  R[$tool.online_ms]=$(median "${onlines[@]}")
  R[$tool.start_all]="${starts[*]}"
  R[$tool.online_all]="${onlines[*]}"
  R[$tool.cpu_ms]=$(median "${cpus[@]}")
  R[$tool.cpu_all]="${cpus[*]}"
  R[$tool.list_all]="${lists[*]}"
  R[$tool.busy_all]="${rsss[*]}"

  log "$tool: crash-restart latency, $CYCLES cycles (~$((CYCLES * 12 / 10 + 2)) s)"
  make_crash "$tool"
  local dir="$WORK/crash-$tool" until
  timeout 30 "$bin" start "$dir/$cfg" >/dev/null 2>&1 || die "$tool: start of the crash app failed"
  until=$(($(now_us) + (CYCLES * 2 + 15) * 1000000))
  while (($(count_starts "$dir/stamps") < CYCLES + 1)); do
    (($(now_us) > until)) && { log "$tool: only $(count_starts "$dir/stamps") starts before the deadline"; break; }
    sleep 0.1
  done
  timeout 60 "$bin" delete all >/dev/null 2>&1 || log "$tool: delete all failed"
  latencies "$dir/stamps" | head -n "$CYCLES" >"$WORK/$tool-lat"
  R[$tool.lat_n]=$(wc -l <"$WORK/$tool-lat")
  R[$tool.lat_all]=$(paste -sd' ' "$WORK/$tool-lat")
  R[$tool.lat_med]=$(median $(<"$WORK/$tool-lat"))
  R[$tool.lat_max]=$(sort -n "$WORK/$tool-lat" | tail -1)
  [[ -n ${R[$tool.lat_max]} ]] || R[$tool.lat_max]=-

  log "$tool: stopping the daemon"
  timeout 30 "$bin" kill >/dev/null 2>&1 || log "$tool: kill failed"
}

T_START=$(now_us)
((WITH_PM2)) && bench_tool pm2
bench_tool fleet

# --- report ------------------------------------------------------------------
get() { echo "${R[$1]:--}"; }
mb() { [[ ${R[$1]:-} ]] && kb_to_mb "${R[$1]}" || echo -; }
ok() { if [[ $1 != *-* ]] && awk "BEGIN { exit !($1) }" 2>/dev/null; then echo PASS; else echo FAIL; fi; }

ROWS=()
row() { ROWS+=("$1|$2|$3|$4|$5"); }

row "daemon RSS idle (MB)" "$(mb pm2.idle_kb)" "$(mb fleet.idle_kb)" "-" "info"
row "daemon RSS, $N_APPS apps (MB)" "$(mb pm2.busy_kb)" "$(mb fleet.busy_kb)" "<= 10" \
  "$(ok "$(mb fleet.busy_kb) <= 10")"
row "start $N_APPS apps: command returns (ms)" "$(get pm2.start_ms)" "$(get fleet.start_ms)" "-" "info"
row "start $N_APPS apps: all online (ms)" "$(get pm2.online_ms)" "$(get fleet.online_ms)" ">= 5x faster" \
  "$( ((WITH_PM2)) && ok "$(get pm2.online_ms) >= 5 * $(get fleet.online_ms)" || echo "n/a (no PM2)")"
if ((WITH_PM2)); then
  row "  speed-up, all online (PM2 / fleet)" "-" \
    "$(awk -v p="${R[pm2.online_ms]}" -v f="${R[fleet.online_ms]}" 'BEGIN { printf "%.1fx", p / (f ? f : 1) }')" ">= 5x" "-"
fi
# What the whole machine (manager, CLI and the 100 starting apps) spent, start to all
# online; divided by the CPU count it is the fastest the start could be on this machine.
floor() { [[ ${R[$1.cpu_ms]:-} =~ ^[0-9]+$ ]] && echo "${R[$1.cpu_ms]} (floor $((R[$1.cpu_ms] / $(nproc))))" || echo -; }
row "  machine CPU, start to all online (ms)" "$(floor pm2)" "$(floor fleet)" "-" "info"
row "restart latency, median (ms)" "$(get pm2.lat_med)" "$(get fleet.lat_med)" "< 20" \
  "$(ok "$(get fleet.lat_med) < 20")"
row "restart latency, max (ms)" "$(get pm2.lat_max)" "$(get fleet.lat_max)" "< 20" \
  "$(ok "$(get fleet.lat_max) < 20")"

echo
echo "fleet agent benchmark: $N_APPS apps, $RUNS runs, $CYCLES crash cycles, $(nproc) CPUs, $(uname -sr)"
echo "PM2: ${PM2_VERSION:-not run} (node $(node -v 2>/dev/null || echo -)); fleet: $FLEET_VERSION"
echo
print_table "metric|PM2|fleet|target (fleet)|verdict" "${ROWS[@]}"
echo
echo "raw:"
for t in pm2 fleet; do
  [[ $t == pm2 ]] && ((!WITH_PM2)) && continue
  printf '  %-5s idle_rss_kb=%s busy_rss_kb(per run)=%s\n' "$t" "$(get $t.idle_kb)" "$(get $t.busy_all)"
  printf '  %-5s start_ms(per run)=%s online_ms(per run)=%s list_ms(per run)=%s\n' "$t" \
    "$(get $t.start_all)" "$(get $t.online_all)" "$(get $t.list_all)"
  printf '  %-5s machine_cpu_ms_start_to_online(per run)=%s\n' "$t" "$(get $t.cpu_all)"
  printf '  %-5s restart_latencies_ms(%s)=%s\n' "$t" "$(get $t.lat_n)" "$(get $t.lat_all)"
done
echo "  times are medians over $RUNS runs; RSS with apps is the first run's (later runs show any"
echo "  growth across start/delete rounds); online_ms includes the"
echo "  one list call that saw all apps online (list_ms is one such call)"
echo "  total bench time: $(($(ms_since "$T_START") / 1000)) s"
