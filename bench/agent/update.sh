#!/usr/bin/env bash
# bench/agent/update.sh: `fleet update` against `pm2 update`, 100 apps each, in one run.
#
# Each tool runs 100 apps: idle ones, a log flood printing numbered lines (with a
# millisecond timestamp the daemon adds to each line), and HTTP apps (fleet: one in
# cluster mode, one behind its proxy; PM2: two in fork mode, as PM2's cluster mode is
# Node-only) that a client hits on new connections throughout. Then the daemon is
# replaced (`fleet update --agent <copy>`, `pm2 update`) and the run prints:
#   - the time from the command to the daemon serving again,
#   - how many app pids changed (restarts),
#   - the longest gap in log capture (between consecutive line stamps) around it,
#     and lines lost or doubled (fleet: numbering must stay continuous),
#   - the longest time a request waited, and requests refused or failed.
# Targets (issue 15): fleet update under 200 ms, no line lost, no connection refused.
#
# Usage: bench/agent/update.sh [--fleet-only] [--apps N] [--no-build]
#   --fleet-only  skip PM2 (no node/npm needed)
#   --apps N      apps per tool (default 100)
#   --no-build    use the existing target/release binaries
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE="$ROOT/bench/.cache"
# shellcheck source=../lib.sh
source "$ROOT/bench/lib.sh"

N_APPS=100
WITH_PM2=1
BUILD=1
while (($#)); do
  case "$1" in
    --fleet-only) WITH_PM2=0 ;;
    --apps) N_APPS=${2:?--apps needs a number}; shift ;;
    --no-build) BUILD=0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ $N_APPS =~ ^[1-9][0-9]*$ ]] && ((N_APPS >= 5)) || { echo "--apps takes a number >= 5" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fleet-bench-update.XXXXXX")
export PM2_HOME="$WORK/pm2-home" FLEET_HOME="$WORK/fleet-home" FLEET_BENCH_MARK="$WORK"
unset FLEET_CONTROLLER FLEET_TOKEN PM2_PUBLIC_KEY PM2_SECRET_KEY
export PM2_DISCRETE_MODE=true
FLEET="$ROOT/target/release/fleet"
PM2=""
install_cleanup

if ((BUILD)); then build_fleet fleet-cli fleet-agent fleet-testapp; fi
TESTAPP="$ROOT/target/release/fleet-testapp"
[[ -x $FLEET && -x $TESTAPP ]] || die "missing release binaries (run without --no-build)"
((WITH_PM2)) && install_pm2
command -v python3 >/dev/null || die "the probe needs python3"

mkdir -p "$WORK/apps" "$PM2_HOME" "$FLEET_HOME"
cp "$ROOT/target/release/fleet-agent" "$WORK/fleet-agent-new"
printf '#!/bin/sh\nexec sleep 100000\n' >"$WORK/apps/idle.sh"
# The flood: numbered lines, as fast as the daemon takes them.
printf '%s\n' 'import sys' 'i = 0' 'w = sys.stdout.write' 'while True:' '    i += 1' '    w(f"{i}\n")' \
  '    if i % 64 == 0: sys.stdout.flush()' >"$WORK/apps/flood.py"
chmod +x "$WORK/apps/idle.sh"

# The probe: new connections to each port in turn until $WORK/stop exists; prints
# requests, failures (refused, reset, timed out) and the longest request in ms.
cat >"$WORK/probe.py" <<'EOF'
import os, socket, sys, time, json
ports = [int(p) for p in sys.argv[2].split(",")]
stop = sys.argv[1]
ok = failed = 0; longest = 0.0; errors = {}
while not os.path.exists(stop):
    for port in ports:
        t = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                if not s.recv(64): raise OSError("empty answer")
            ok += 1
        except OSError as e:
            failed += 1; errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
        longest = max(longest, (time.monotonic() - t) * 1000)
print(json.dumps({"ok": ok, "failed": failed, "longest_ms": round(longest, 1), "errors": errors}))
EOF

# log_gaps <file> <from_ms> <to_ms>: the longest gap between consecutive line stamps
# within the window, and lines lost/doubled/restarted by their numbers.
log_gaps() {
  python3 - "$@" <<'EOF'
import sys, datetime, json
path, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
prev_t = None; longest = 0; prev_n = None; lost = doubled = resets = 0
stamps = {}
for line in open(path, errors="replace"):
    stamp, _, rest = line.rstrip("\n").rpartition(": ")
    try:
        t = stamps.get(stamp)
        if t is None:
            t = stamps[stamp] = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp() * 1000
        n = int(rest)
    except ValueError:
        continue
    if prev_n is not None:
        if n == prev_n + 1: pass
        elif n == 1: resets += 1
        elif n <= prev_n: doubled += prev_n - n + 1
        else: lost += n - prev_n - 1
    prev_n = n
    if lo <= t <= hi and prev_t is not None and prev_t >= lo:
        longest = max(longest, t - prev_t)
    prev_t = t
print(json.dumps({"longest_gap_ms": round(longest), "lost": lost, "doubled": doubled, "restarts": resets}))
EOF
}

declare -A R

bench_fleet() {
  local web behind n i cfg="$WORK/apps/fleet.toml"
  web=$(free_port) behind=$(free_port)
  {
    printf '[apps.web]\nscript = "%s"\nexec_mode = "cluster"\nport = %s\ninstances = 2\n\n' "$TESTAPP" "$web"
    printf '[apps.behind]\nscript = "%s"\nargs = ["--port-only"]\nexec_mode = "proxy"\nport = %s\ninstances = 2\n\n' "$TESTAPP" "$behind"
    # No rotation: every line stays in one file to be checked (PM2 has none by default).
    printf '[apps.flood]\nscript = "%s"\ninterpreter = "python3"\nlog_date_format = "YYYY-MM-DD HH:mm:ss.SSS"\nmax_size = 0\n\n' "$WORK/apps/flood.py"
    for ((i = 4; i <= N_APPS; i++)); do printf '[apps.idle-%03d]\nscript = "%s"\n\n' "$i" "$WORK/apps/idle.sh"; done
  } >"$cfg"
  "$FLEET" start "$cfg" >/dev/null
  wait_for "fleet apps online" 60 fleet_all_online "$((N_APPS + 2))"
  run_update fleet "$web,$behind" "$FLEET_HOME/logs/flood-out.log" \
    "$FLEET" update --agent "$WORK/fleet-agent-new"
  "$FLEET" kill >/dev/null 2>&1 || true
}

bench_pm2() {
  local web behind i cfg="$WORK/apps/ecosystem.config.js"
  web=$(free_port) behind=$(free_port)
  {
    echo 'module.exports = { apps: ['
    printf '  { name: "web", script: "%s", args: "--port-only", interpreter: "none", env: { PORT: "%s" } },\n' "$TESTAPP" "$web"
    printf '  { name: "behind", script: "%s", args: "--port-only", interpreter: "none", env: { PORT: "%s" } },\n' "$TESTAPP" "$behind"
    printf '  { name: "flood", script: "%s", interpreter: "python3", log_date_format: "YYYY-MM-DD HH:mm:ss.SSS" },\n' "$WORK/apps/flood.py"
    for ((i = 4; i <= N_APPS; i++)); do printf '  { name: "idle-%03d", script: "%s", interpreter: "none" },\n' "$i" "$WORK/apps/idle.sh"; done
    echo '] };'
  } >"$cfg"
  "$PM2" start "$cfg" >/dev/null
  wait_for "pm2 apps online" 60 pm2_all_online "$N_APPS"
  run_update pm2 "$web,$behind" "$PM2_HOME/logs/flood-out.log" "$PM2" update
  "$PM2" kill >/dev/null 2>&1 || true
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
fleet_pids() { "$FLEET" list --json | python3 -c 'import json,sys; print(sorted((p["name"], p["instance"], p["pid"]) for p in json.load(sys.stdin)))'; }
pm2_pids() { "$PM2" jlist | python3 -c 'import json,sys; print(sorted((p["name"], p["pm2_env"].get("NODE_APP_INSTANCE", 0), p["pid"]) for p in json.load(sys.stdin)))'; }
fleet_all_online() { [[ $("$FLEET" list --json | python3 -c 'import json,sys; print(sum(p["status"] == "online" for p in json.load(sys.stdin)))') -ge $1 ]]; }
pm2_all_online() { [[ $("$PM2" jlist | python3 -c 'import json,sys; print(sum(p["pm2_env"]["status"] == "online" and p["pid"] > 0 for p in json.load(sys.stdin)))') -ge $1 ]]; }
# wait_for <what> <seconds> <command...>: poll until the command succeeds.
wait_for() {
  local what=$1 until=$(($(now_us) + $2 * 1000000)); shift 2
  until "$@" 2>/dev/null; do
    (($(now_us) < until)) || die "timed out waiting for $what"
    sleep 0.05
  done
}
count_changed() { python3 -c 'import ast,sys; a, b = ast.literal_eval(sys.argv[1]), ast.literal_eval(sys.argv[2]); print(len(set(a) - set(b)))' "$1" "$2"; }

# run_update <tool> <ports> <flood log> <command...>
run_update() {
  local tool=$1 ports=$2 flood=$3 before after t0 took lo hi probe
  shift 3
  sleep 1 # a second of steady state in the log and the probe
  before=$("${tool}_pids")
  rm -f "$WORK/stop"
  python3 "$WORK/probe.py" "$WORK/stop" "$ports" >"$WORK/$tool-probe.json" &
  probe=$!
  sleep 0.5
  lo=$(($(now_us) / 1000 - 500))
  t0=$(now_us)
  "$@" >"$WORK/$tool-update.out" 2>&1 || { cat "$WORK/$tool-update.out" >&2; die "$tool update failed"; }
  R[$tool.cmd]=$(ms_since "$t0")
  wait_for "$tool apps back online" 60 "${tool}_all_online" "$((N_APPS - 3))"
  took=$(ms_since "$t0")
  sleep 1
  hi=$(($(now_us) / 1000))
  touch "$WORK/stop"
  wait "$probe"
  after=$("${tool}_pids")
  # The flood stops before its log is read (a growing file is never read to its end).
  if [[ $tool == pm2 ]]; then "$PM2" stop flood >/dev/null; else "$FLEET" stop flood >/dev/null; fi
  R[$tool.took]=$took
  R[$tool.restarted]=$(count_changed "$before" "$after")
  R[$tool.probe]=$(cat "$WORK/$tool-probe.json")
  R[$tool.log]=$(log_gaps "$flood" "$lo" "$hi")
  log "$tool: $(head -c 300 "$WORK/$tool-update.out")"
}

json_field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

bench_fleet
((WITH_PM2)) && bench_pm2

cpu_floor=$(nproc)
printf '\n%-44s %14s %14s   %s\n' "$N_APPS apps, $cpu_floor CPUs" "fleet update" "pm2 update" "target"
row() { printf '%-44s %14s %14s   %s\n' "$1" "$2" "${3:--}" "$4"; }
pm2v() { ((WITH_PM2)) && json_field "${R[pm2.$1]}" "$2" || echo -; }
row "the command, until it returned (ms)" "${R[fleet.cmd]}" "${R[pm2.cmd]:--}" "< 200"
row "the command, until every app is online (ms)" "${R[fleet.took]}" "${R[pm2.took]:--}" ""
row "app pids changed (restarts)" "${R[fleet.restarted]}" "${R[pm2.restarted]:--}" "0"
row "longest gap in log capture (ms)" "$(json_field "${R[fleet.log]}" longest_gap_ms)" "$(pm2v log longest_gap_ms)" ""
row "flood lines lost / doubled" "$(json_field "${R[fleet.log]}" lost) / $(json_field "${R[fleet.log]}" doubled)" \
  "$( ((WITH_PM2)) && echo "restarted $(pm2v log restarts)x" )" "0 / 0"
row "requests ok / failed" "$(json_field "${R[fleet.probe]}" ok) / $(json_field "${R[fleet.probe]}" failed)" \
  "$( ((WITH_PM2)) && echo "$(pm2v probe ok) / $(pm2v probe failed)" )" "0 failed"
row "longest request (ms)" "$(json_field "${R[fleet.probe]}" longest_ms)" "$(pm2v probe longest_ms)" ""
printf '\nfleet %s; PM2 %s; `fleet update` reported: %s\n' "$("$FLEET" --version | head -1)" "${PM2_VERSION:-not run}" \
  "$(grep -o 'in [0-9]* ms' "$WORK/fleet-update.out" || echo '?')"
