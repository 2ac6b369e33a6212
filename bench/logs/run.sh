#!/usr/bin/env bash
# bench/logs/run.sh: log throughput of fleet's agent against PM2, side by side, in one run.
#
# One app (bench/logs/flood.c, the same binary for both, run in fork mode) writes
# 1,000,000 numbered lines of 64 bytes to stdout as fast as it can, then sleeps.
# Measures, for each tool, over several runs (fresh log files each time):
#   1. seconds from `start` until all lines are in the out log file, and from the
#      app's first write until then (the flood itself), as lines/s,
#   2. lines lost (and duplicated, malformed or out of order), checked line by line,
#   3. the daemon's CPU seconds (utime + stime) and peak RSS during the flood
#      (VmRSS sampled every 2 ms; VmHWM too),
# and prints a table against the issue's targets (0 lines lost, at least 3x PM2's
# throughput, agent RSS under 20 MB during the flood).
#
# Usage: bench/logs/run.sh [--fleet-only] [--lines N] [--runs N] [--deadline S] [--no-build]
#   --fleet-only  skip PM2 (no node/npm needed)
#   --lines N     lines the app writes (default 1000000)
#   --runs N      floods per tool; figures are the median (default 5)
#   --deadline S  give up waiting for the lines after S seconds (default 60), or
#                 5 s after the app has written everything if the files stop growing
#   --no-build    use the existing target/release binaries
#
# PM2 is installed from npm into bench/.cache/pm2 (git-ignored) and runs with a
# private PM2_HOME; fleet runs with a private FLEET_HOME. The flood app and the
# observer that polls the log files and the daemon's RSS (bench/logs/watch.c) are
# compiled with the system C compiler into bench/.cache. Both daemons and every
# app are stopped on exit, whatever happens.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME with a '.' separator

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE="$ROOT/bench/.cache"
# shellcheck source=../lib.sh
source "$ROOT/bench/lib.sh"

LINES=1000000
RUNS=5
DEADLINE=60
STALL=5
WITH_PM2=1
BUILD=1
LINE_BYTES=64
while (($#)); do
  case "$1" in
    --fleet-only) WITH_PM2=0 ;;
    --lines) LINES=${2:?--lines needs a number}; shift ;;
    --runs) RUNS=${2:?--runs needs a number}; shift ;;
    --deadline) DEADLINE=${2:?--deadline needs a number}; shift ;;
    --no-build) BUILD=0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
for v in "$LINES" "$RUNS" "$DEADLINE"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "--lines, --runs and --deadline take positive integers" >&2; exit 2; }
done
((LINES < 10000000000)) || { echo "--lines: at most 9999999999 (10-digit line numbers)" >&2; exit 2; }
BYTES=$((LINES * LINE_BYTES))


# --- private homes, set before any pm2 or fleet command can run ---------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fleet-bench-logs.XXXXXX")
export PM2_HOME="$WORK/pm2-home"
export FLEET_HOME="$WORK/fleet-home"
# Everything this run starts carries this mark in its environment, so cleanup
# can find stragglers by pid without touching anyone else's processes.
export FLEET_BENCH_MARK="$WORK"
unset FLEET_CONTROLLER FLEET_TOKEN PM2_PUBLIC_KEY PM2_SECRET_KEY
export PM2_DISCRETE_MODE=true # no "PM2 welcome" banner

FLEET="$ROOT/target/release/fleet"
PM2=""
WATCHER=""
START_CMD=""


stop_own() {
  local p
  for p in "$WATCHER" "$START_CMD"; do pid_alive "$p" && kill -TERM "$p" 2>/dev/null; done
}
install_cleanup stop_own

# --- helpers -----------------------------------------------------------------
file_size() { local s; s=$(stat -c %s "$1" 2>/dev/null) || true; echo "${s:-0}"; }
# out_files <dir>: the out log and the files rotated aside from it (fleet rotates at
# 10 MB by default, keeping 30: nothing is deleted at the default 64 MB), oldest first.
out_files() { ls -1tr "$1"/out.log "$1"/out__*.log 2>/dev/null || true; }

# cpu_ticks <pid>: utime + stime of the whole process (all threads), in clock ticks.
# The command name (field 2) may hold spaces and parentheses (PM2's "PM2 v7: God
# Daemon (...)"), so the fields are counted after its last ')'.
cpu_ticks() {
  local s f
  s=$(<"/proc/$1/stat") || { echo 0; return; }
  s=${s##*) }
  read -r -a f <<<"$s"
  echo $((f[11] + f[12])) # fields 14 and 15
}

# median <numbers...>: "-" when there are none
median() {
  printf '%s\n' "$@" | { grep -E '^[0-9.]+$' || true; } | sort -g |
    awk '{ v[NR] = $1; if ($1 != int($1)) frac = 1 }
      END { if (!NR) { print "-"; exit }
            if (NR % 2) { print v[(NR + 1) / 2]; exit }
            m = (v[NR / 2] + v[NR / 2 + 1]) / 2
            if (frac) printf "%.3f\n", m; else printf "%d\n", m + 0.5 }'
}
maxof() { printf '%s\n' "$@" | { grep -E '^[0-9.]+$' || true; } | sort -g | tail -1 | grep . || echo -; }

# check_lines <n> <files...>: "lines valid unique dup malformed disorder", where valid lines
# are exactly the app's (10-digit number below n, its padding); lost = n - unique.
check_lines() {
  awk -v n="$1" -v pad="$(printf '%053d' 0 | tr 0 .)" '
    { lines++
      if (length($0) != 63 || substr($0, 11) != pad || substr($0, 1, 10) !~ /^[0-9]+$/) { bad++; next }
      k = substr($0, 1, 10) + 0
      if (k >= n) { bad++; next }
      valid++
      if (k in seen) dup++; else { seen[k] = 1; uniq++ }
      if (k != prev + 1 && valid > 1) disorder++
      prev = k }
    END { printf "%d %d %d %d %d %d\n", lines, valid, uniq, dup, bad, disorder }' "${@:2}" /dev/null
}

# --- build and install -------------------------------------------------------
if ((BUILD)); then
  build_fleet fleet-cli fleet-agent
fi
[[ -x $FLEET && -x $ROOT/target/release/fleet-agent ]] || die "missing $FLEET or fleet-agent (run without --no-build)"

mkdir -p "$CACHE"
FLOOD="$CACHE/logs-flood"
WATCH="$CACHE/logs-watch"
compile() { # <source> <binary>
  [[ -x $2 && ! $1 -nt $2 ]] && return 0
  CC=${CC:-$(command -v cc || command -v gcc || true)}
  [[ -n $CC ]] || die "a C compiler (cc or gcc) is needed for the flood app"
  log "compiling $(basename "$1") into $2"
  "$CC" -O2 -o "$2.tmp.$$" "$1" || die "compiling $1 failed"
  mv -f "$2.tmp.$$" "$2"
}
compile "$HERE/flood.c" "$FLOOD"
compile "$HERE/watch.c" "$WATCH"

if ((WITH_PM2)); then
  install_pm2
fi
FLEET_VERSION=$("$FLEET" --version 2>/dev/null | head -1 || echo fleet)

# --- configs: the same app, raw lines, explicit files, no restart -------------
mkdir -p "$PM2_HOME" "$FLEET_HOME"

# write_config <tool> <dir>: the config for one run, logs and stamps in dir.
write_config() {
  local tool=$1 dir=$2
  if [[ $tool == pm2 ]]; then
    # merge_logs: no "-<id>" suffix on the file names; time off, no date format:
    # raw lines, as fleet writes them by default.
    cat >"$dir/ecosystem.config.js" <<EOF
module.exports = { apps: [{ name: "flood", script: "$FLOOD", interpreter: "none", args: ["$LINES"],
  exec_mode: "fork", instances: 1, autorestart: false, merge_logs: true, time: false,
  out_file: "$dir/out.log", error_file: "$dir/err.log",
  env: { FLOOD_STAMPS: "$dir/stamps" } }] };
EOF
  else
    cat >"$dir/fleet.toml" <<EOF
[apps.flood]
script = "$FLOOD"
interpreter = "none"
args = ["$LINES"]
exec_mode = "fork"
instances = 1
autorestart = false
merge_logs = true
time = false
out_file = "$dir/out.log"
error_file = "$dir/err.log"
env = { FLOOD_STAMPS = "$dir/stamps" }
EOF
  fi
}

# --- the measurement, identical for both tools -------------------------------
declare -A R # R[tool.metric]: one value per run, space-separated (idle_kb: one value)

add() { R[$1]="${R[$1]:-}${R[$1]:+ }$2"; }

flood_once() { # <tool> <bin> <cfg> <pid> <run>
  local tool=$1 bin=$2 cfg=$3 pid=$4 r=$5
  local dir="$WORK/$tool-run$r" t0 t_disk state size peak samples cpu0 cpu1 begin end st lines valid uniq dup bad dis
  mkdir -p "$dir"
  write_config "$tool" "$dir"

  cpu0=$(cpu_ticks "$pid")
  # the watcher polls the files and the daemon's RSS every 2 ms, without forking
  "$WATCH" "$pid" "$BYTES" "$dir" "$dir/stamps" "$DEADLINE" "$STALL" >"$dir/watch" &
  WATCHER=$!
  log "$tool: flood $r/$RUNS ($LINES lines)"
  t0=$(now_us)
  timeout 60 "$bin" start "$dir/$cfg" >"$dir/start.out" 2>&1 &
  START_CMD=$!
  wait "$WATCHER" || true
  WATCHER=""
  cpu1=$(cpu_ticks "$pid")
  if ! wait "$START_CMD"; then
    cat "$dir/start.out" >&2
    log "$tool: start returned an error"
  fi
  START_CMD=""
  read -r state t_disk size peak samples <"$dir/watch" || die "$tool: the watcher printed nothing"
  pid_alive "$pid" || die "$tool: the daemon (pid $pid) died during the flood"
  if [[ $state != done ]]; then
    log "$tool: only $((size / LINE_BYTES)) of $LINES lines on disk after $((($(now_us) - t0) / 1000000)) s"
    t_disk=""
  fi

  sleep 0.5 # anything written late (duplicates) shows up in the check
  local files=()
  mapfile -t files < <(out_files "$dir")
  read -r lines valid uniq dup bad dis <<<"$(check_lines "$LINES" "${files[@]}")"
  begin=$(awk '$1 == "begin" { print $2; exit }' "$dir/stamps" 2>/dev/null || true)
  end=$(awk '$1 == "end" { print $2; exit }' "$dir/stamps" 2>/dev/null || true)

  if [[ -n $t_disk ]]; then
    st=$(awk -v a="$t0" -v b="$t_disk" 'BEGIN { printf "%.3f", (b - a) / 1e6 }')
    add "$tool.total_s" "$st"
    add "$tool.total_lps" "$(awk -v s="$st" -v n="$LINES" 'BEGIN { printf "%d", n / s }')"
    if [[ -n $begin ]]; then
      st=$(awk -v a="$begin" -v b="$t_disk" 'BEGIN { printf "%.3f", (b - a) / 1e6 }')
      add "$tool.flood_s" "$st"
      add "$tool.flood_lps" "$(awk -v s="$st" -v n="$LINES" 'BEGIN { printf "%d", n / s }')"
    fi
  else
    add "$tool.total_s" "incomplete"
    add "$tool.flood_s" "incomplete"
    add "$tool.timeouts" "$r"
  fi
  [[ -n $begin ]] && add "$tool.launch_s" "$(awk -v a="$t0" -v b="$begin" 'BEGIN { printf "%.3f", (b - a) / 1e6 }')"
  [[ -n $begin && -n $end ]] && add "$tool.write_s" "$(awk -v a="$begin" -v b="$end" 'BEGIN { printf "%.3f", (b - a) / 1e6 }')"
  add "$tool.lost" "$((LINES - uniq))"
  add "$tool.dup" "$dup"
  add "$tool.bad" "$bad"
  add "$tool.disorder" "$dis"
  add "$tool.err_bytes" "$(file_size "$dir/err.log")"
  add "$tool.cpu_s" "$(awk -v t="$((cpu1 - cpu0))" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')"
  add "$tool.peak_kb" "$peak"
  add "$tool.samples" "$samples"
  add "$tool.hwm_kb" "$(hwm_kb "$pid")"
  add "$tool.after_kb" "$(rss_kb "$pid")"

  timeout 60 "$bin" delete flood >/dev/null 2>&1 || log "$tool: delete failed"
  sleep 0.5
  add "$tool.files" "$(out_files "$dir" | wc -l)"
  rm -f "$dir"/out.log "$dir"/out__*.log # 64 MB each; the figures are taken
}

bench_tool() { # <pm2|fleet>
  local tool=$1 bin cfg pidfile pid r
  if [[ $tool == pm2 ]]; then bin=$PM2 cfg=ecosystem.config.js pidfile="$PM2_HOME/pm2.pid"
  else bin=$FLEET cfg=fleet.toml pidfile="$FLEET_HOME/agent.pid"; fi

  log "$tool: starting the daemon"
  timeout 30 "$bin" ping >/dev/null || die "$tool ping failed"
  pid=""
  for ((r = 0; r < 200; r++)); do
    pid=$({ tr -dc '0-9' <"$pidfile"; } 2>/dev/null || true)
    pid_alive "$pid" && break
    sleep 0.05
  done
  pid_alive "$pid" || die "$tool: no live pid in $pidfile"
  sleep 1 # let it settle
  R[$tool.idle_kb]=$(rss_kb "$pid")

  for ((r = 1; r <= RUNS; r++)); do flood_once "$tool" "$bin" "$cfg" "$pid" "$r"; done

  log "$tool: stopping the daemon"
  timeout 30 "$bin" kill >/dev/null 2>&1 || log "$tool: kill failed"
}

T_START=$(now_us)
((WITH_PM2)) && bench_tool pm2
bench_tool fleet

# --- report ------------------------------------------------------------------
all() { echo "${R[$1]:-}"; }
med() { median ${R[$1]:-}; }
mx() { maxof ${R[$1]:-}; }
mb() { [[ $1 =~ ^[0-9]+$ ]] && kb_to_mb "$1" || echo -; }
num() { [[ $1 =~ ^[0-9.]+$ ]]; }
ok() { if awk "BEGIN { exit !($1) }" 2>/dev/null; then echo PASS; else echo FAIL; fi; }
ratio() { num "$1" && num "$2" && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1fx", a / b; else print "-" }' || echo -; }

ROWS=()
row() { ROWS+=("$1|$2|$3|$4|$5"); }
for t in pm2 fleet; do
  # a run that timed out makes the tool's time figures meaningless
  [[ -n ${R[$t.timeouts]:-} ]] && R[$t.timed_out]=1
done
tm() { [[ -n ${R[$1.timed_out]:-} ]] && echo "incomplete" || med "$1.$2"; }

F_LPS=$(med fleet.flood_lps) P_LPS=$(med pm2.flood_lps)
F_TLPS=$(med fleet.total_lps) P_TLPS=$(med pm2.total_lps)
F_LOST=$(mx fleet.lost) F_DUP=$(mx fleet.dup) F_BAD=$(mx fleet.bad)
F_PEAK=$(mx fleet.peak_kb)
[[ -n ${R[fleet.timed_out]:-} ]] && F_LPS=- F_TLPS=-

row "seconds until all on disk, from start" "$(tm pm2 total_s)" "$(tm fleet total_s)" "-" "info"
row "  of which start until first write" "$(med pm2.launch_s)" "$(med fleet.launch_s)" "-" "info"
row "  of which first write until on disk" "$(tm pm2 flood_s)" "$(tm fleet flood_s)" "-" "info"
row "throughput, flood (lines/s)" "$P_LPS" "$F_LPS" ">= 3x PM2" \
  "$( ((WITH_PM2)) && { num "$F_LPS" && num "$P_LPS" && ok "$F_LPS >= 3 * $P_LPS" || echo FAIL; } || echo "n/a (no PM2)")"
((WITH_PM2)) && row "  fleet / PM2" "-" "$(ratio "$F_LPS" "$P_LPS")" ">= 3x" "-"
row "throughput, from start (lines/s)" "$P_TLPS" "$F_TLPS" ">= 3x PM2" \
  "$( ((WITH_PM2)) && { num "$F_TLPS" && num "$P_TLPS" && ok "$F_TLPS >= 3 * $P_TLPS" || echo FAIL; } || echo "n/a (no PM2)")"
((WITH_PM2)) && row "  fleet / PM2" "-" "$(ratio "$F_TLPS" "$P_TLPS")" ">= 3x" "-"
row "app's own write time (s)" "$(med pm2.write_s)" "$(med fleet.write_s)" "-" "info"
row "lines lost (worst run)" "$(mx pm2.lost)" "$F_LOST" "0" "$(num "$F_LOST" && ok "$F_LOST == 0" || echo FAIL)"
row "lines duplicated / malformed (worst run)" "$(mx pm2.dup) / $(mx pm2.bad)" "$F_DUP / $F_BAD" "0 / 0" \
  "$(num "$F_DUP" && num "$F_BAD" && ok "$F_DUP + $F_BAD == 0" || echo FAIL)"
row "agent CPU seconds during flood" "$(med pm2.cpu_s)" "$(med fleet.cpu_s)" "-" "info"
row "agent peak RSS during flood (MB, worst run)" "$(mb "$(mx pm2.peak_kb)")" "$(mb "$F_PEAK")" "< 20" \
  "$(num "$F_PEAK" && ok "$F_PEAK < 20 * 1024" || echo FAIL)"
row "agent VmHWM after last flood (MB)" "$(mb "$(maxof ${R[pm2.hwm_kb]:-})")" "$(mb "$(maxof ${R[fleet.hwm_kb]:-})")" "-" "info"
row "agent RSS idle, before (MB)" "$(mb "${R[pm2.idle_kb]:-}")" "$(mb "${R[fleet.idle_kb]:-}")" "-" "info"

echo
echo "fleet log benchmark: $LINES lines of $LINE_BYTES bytes, $RUNS runs, $(nproc) CPUs, $(uname -sr)"
echo "PM2: ${PM2_VERSION:-not run} (node $(node -v 2>/dev/null || echo -)); fleet: $FLEET_VERSION"
echo
print_table "metric|PM2|fleet|target (fleet)|verdict" "${ROWS[@]}"
echo
echo "raw (per run):"
for t in pm2 fleet; do
  [[ $t == pm2 ]] && ((!WITH_PM2)) && continue
  printf '  %-5s total_s=%s launch_s=%s flood_s=%s app_write_s=%s\n' "$t" \
    "$(all $t.total_s)" "$(all $t.launch_s)" "$(all $t.flood_s)" "$(all $t.write_s)"
  printf '  %-5s flood_lines_per_s=%s total_lines_per_s=%s\n' "$t" "$(all $t.flood_lps)" "$(all $t.total_lps)"
  printf '  %-5s lost=%s dup=%s malformed=%s out_of_order=%s stderr_bytes=%s out_files=%s\n' "$t" \
    "$(all $t.lost)" "$(all $t.dup)" "$(all $t.bad)" "$(all $t.disorder)" "$(all $t.err_bytes)" "$(all $t.files)"
  printf '  %-5s cpu_s=%s peak_rss_kb=%s (%s samples) hwm_kb=%s rss_after_kb=%s idle_rss_kb=%s\n' "$t" \
    "$(all $t.cpu_s)" "$(all $t.peak_kb)" "$(all $t.samples)" "$(all $t.hwm_kb)" "$(all $t.after_kb)" \
    "${R[$t.idle_kb]:-}"
done
echo "  times and CPU are medians over $RUNS runs, one daemon per tool across its runs. 'from start'"
echo "  counts from the start command until the out file holds every byte (polled every 2 ms);"
echo "  'flood' from the app's first write (its own stamp) until then. The app's write time is"
echo "  how long its writes took to return: close to the flood time when the capture holds it back."
echo "  Peak RSS is the max of VmRSS sampled every 2 ms during the flood; VmHWM is the kernel's"
echo "  peak since the daemon started (it includes the earlier runs and, for PM2, its start-up)."
echo "  total bench time: $((($(now_us) - T_START) / 1000000)) s"
