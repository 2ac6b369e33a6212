#!/usr/bin/env bash
# bench/agent/soak.sh: the agent under a long, busy life, for leaks.
#
# Runs 100 apps for MINUTES: 60 idle, 10 crash loops (exit after 0.5 s, restarted
# after 200 ms, for ever), 10 log floods (1000 lines/s each, rotated at 1 MB), 10
# memory restarts (grow 5 MB/s past max_memory_restart = 40M), 5 cron restarts
# (every 5 s) and 5 cluster apps reloaded every 5 s. Prints the agent's RSS, open
# file descriptors and CPU (a 10 s window) after a warm-up and at the end, against
# the target: RSS and descriptors flat (growth under 5%), and the RSS every 30 s.
#
# The warm-up (3 minutes, --warmup-minutes) lets bounded caches fill before the first
# figure: each instance's 32 KiB log ring (the reloaded apps write a few lines per
# reload, so theirs take minutes), the allocator's and tokio's pools sized by the
# peak of concurrent work. Measured with heaptrack on 4,500 replacements: the heap
# peaks under 1 MB, and anonymous memory stops growing after the first 1,500.
#
# Usage: bench/agent/soak.sh [--minutes N] [--warmup-minutes N] [--no-build]
#   --minutes N          how long after the warm-up (default 10)
#   --warmup-minutes N   before the first figure (default 3)
#   --no-build    use the existing target/release binaries
#   --heaptrack FILE  run the agent under heaptrack, writing FILE (.zst); the agent is
#                 SIGKILLed at the end, so what heaptrack reports as leaked is what the
#                 agent held then (heaptrack_print --print-leaks FILE.zst)
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=../lib.sh
source "$ROOT/bench/lib.sh"

MINUTES=10
WARMUP=3
BUILD=1
HEAPTRACK=""
while (($#)); do
  case "$1" in
    --minutes) MINUTES=${2:?--minutes needs a number}; shift ;;
    --warmup-minutes) WARMUP=${2:?--warmup-minutes needs a number}; shift ;;
    --no-build) BUILD=0 ;;
    --heaptrack) HEAPTRACK=${2:?--heaptrack needs a file}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ $MINUTES =~ ^[1-9][0-9]*$ && $WARMUP =~ ^[0-9]+$ ]] ||
  { echo "--minutes takes a positive integer, --warmup-minutes a whole number" >&2; exit 2; }
command -v python3 >/dev/null || die "the memory-restart apps need python3"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fleet-soak.XXXXXX")
export FLEET_HOME="$WORK/fleet-home"
export FLEET_BENCH_MARK="$WORK"
unset FLEET_CONTROLLER FLEET_TOKEN
FLEET="$ROOT/target/release/fleet"
TESTAPP="$ROOT/target/release/fleet-testapp"
install_cleanup

((BUILD)) && build_fleet fleet-cli fleet-agent fleet-testapp

# --- the apps ------------------------------------------------------------------
cfg="$WORK/fleet.toml"
{
  for i in $(seq 1 60); do
    printf '[apps.idle-%02d]\nscript = "exec sleep 100000"\n\n' "$i"
  done
  for i in $(seq 1 10); do
    printf '[apps.crash-%02d]\nscript = "sleep 0.5; exit 1"\nrestart_delay = 200\nmin_uptime = "100ms"\nmax_restarts = 1000000\n\n' "$i"
  done
  for i in $(seq 1 10); do
    printf '[apps.flood-%02d]\nscript = "n=0; while :; do i=0; while [ $i -lt 100 ]; do n=$((n+1)); i=$((i+1)); echo \\"line $n\\"; done; sleep 0.1; done"\nmax_size = "1M"\nretain = 3\n\n' "$i"
  done
  for i in $(seq 1 10); do
    printf '[apps.memory-%02d]\nscript = "python3 -c \\"import time\\na=[]\\nwhile True:\\n    a.append(bytearray(5 << 20)); time.sleep(1)\\""\nmax_memory_restart = "40M"\n\n' "$i"
  done
  for i in $(seq 1 5); do
    printf '[apps.cron-%02d]\nscript = "exec sleep 100000"\ncron_restart = "*/5 * * * * *"\n\n' "$i"
  done
  for i in $(seq 1 5); do
    printf '[apps.reload-%02d]\nscript = "%s"\nexec_mode = "cluster"\nport = %d\ninstances = 2\n\n' "$i" "$TESTAPP" $((20100 + i))
  done
} >"$cfg"

if [[ -n $HEAPTRACK ]]; then
  command -v heaptrack >/dev/null || die "--heaptrack needs heaptrack (apt-get install heaptrack)"
  heaptrack -o "$HEAPTRACK" "$ROOT/target/release/fleet-agent" --home "$FLEET_HOME" \
    >"$WORK/heaptrack.log" 2>&1 &
  until [[ -S $FLEET_HOME/agent.sock ]]; do sleep 0.1; done
fi
log "starting 100 apps (112 instances) for $MINUTES minute(s)"
"$FLEET" start "$cfg" >/dev/null
AGENT=$(tr -dc '0-9' <"$FLEET_HOME/agent.pid")

fds() { find "/proc/$AGENT/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$AGENT/stat"; }
# cpu_percent: the agent's CPU over a 10 s window (while the reload loop runs).
cpu_percent() {
  local t0 w0
  t0=$(cpu_ticks); w0=$(now_us)
  sleep 10
  awk -v t="$(($(cpu_ticks) - t0))" -v hz="$CLK_TCK" -v us="$(($(now_us) - w0))" \
    'BEGIN { printf "%.1f", 100 * t / hz / (us / 1e6) }'
}

# The reloads run in the background for the whole soak.
(
  while :; do
    sleep 5
    "$FLEET" reload /^reload-/ >/dev/null 2>&1 || true
  done
) &
RELOADER=$!

sample() { # <label>
  local cpu
  cpu=$(cpu_percent)
  S_RSS[$1]=$(rss_kb "$AGENT")
  S_FDS[$1]=$(fds)
  S_CPU[$1]=$cpu
  log "$1: agent RSS $(kb_to_mb "${S_RSS[$1]}") MB, ${S_FDS[$1]} fds, CPU ${S_CPU[$1]}%"
}
declare -A S_RSS S_FDS S_CPU

log "warming up for $WARMUP minute(s)"
sleep $((WARMUP * 60 + 50))
sample start
end=$(($(date +%s) + MINUTES * 60))
while (($(date +%s) < end)); do
  sleep 30
  log "$(( (end - $(date +%s) + 59) / 60 )) minute(s) left: agent RSS $(kb_to_mb "$(rss_kb "$AGENT")") MB, $(fds) fds"
done
sample end
pkill -P "$RELOADER" 2>/dev/null || true
kill "$RELOADER" 2>/dev/null || true
if [[ -n $HEAPTRACK ]]; then
  restarts=$(timeout 20 "$FLEET" list --json | python3 -c 'import json,sys; print(sum(p["restarts"] for p in json.load(sys.stdin)))')
  kill -KILL "$AGENT"
  while kill -0 "$AGENT" 2>/dev/null; do sleep 0.1; done
  wait
  log "heaptrack wrote $(ls "$HEAPTRACK"* 2>/dev/null | head -1) ($restarts restarts)"
  exit 0
fi

restarts=$(timeout 20 "$FLEET" list --json | python3 -c 'import json,sys; print(sum(p["restarts"] for p in json.load(sys.stdin)))')
growth() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f%%", 100 * (b - a) / a }'; }
verdict() { awk -v a="$1" -v b="$2" 'BEGIN { exit !((b - a) / a < 0.05) }' && echo PASS || echo FAIL; }
echo
echo "fleet soak: 100 apps, $MINUTES minute(s), $restarts restarts in all; $(nproc) CPUs"
print_table "measure|after warm-up|after $MINUTES more|growth|target" \
  "agent RSS (MB)|$(kb_to_mb "${S_RSS[start]}")|$(kb_to_mb "${S_RSS[end]}")|$(growth "${S_RSS[start]}" "${S_RSS[end]}")|< 5%: $(verdict "${S_RSS[start]}" "${S_RSS[end]}")" \
  "agent open fds|${S_FDS[start]}|${S_FDS[end]}|$(growth "${S_FDS[start]}" "${S_FDS[end]}")|< 5%: $(verdict "${S_FDS[start]}" "${S_FDS[end]}")" \
  "agent CPU (10 s window)|${S_CPU[start]}%|${S_CPU[end]}%|-|-"
