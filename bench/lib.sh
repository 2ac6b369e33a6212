# Shared by the bench/*/run.sh scripts (sourced, not run): logging, /proc readers, the
# results table, building fleet, installing PM2 into bench/.cache, and the cleanup that
# stops both daemons and every process carrying this run's mark. The caller sets ROOT, CACHE,
# WORK (the run's temp dir, also the mark), and PM2/FLEET when it uses them.

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
ms_since() { echo $((($(now_us) - $1) / 1000)); } # whole ms since a now_us stamp
rss_kb() { local k; k=$(awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null) || true; echo "${k:-0}"; }
hwm_kb() { local k; k=$(awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null) || true; echo "${k:-0}"; }
kb_to_mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# build_fleet <cargo packages...>: one release build for the whole run.
build_fleet() {
  local args=() p
  for p in "$@"; do args+=(-p "$p"); done
  log "building fleet (release)"
  (cd "$ROOT" && cargo build --release -q "${args[@]}") || die "cargo build failed"
}

# install_pm2: PM2 from npm into $CACHE/pm2 (git-ignored); sets PM2 and PM2_VERSION.
install_pm2() {
  command -v npm >/dev/null && command -v node >/dev/null || die "PM2 needs node and npm (or use --fleet-only)"
  PM2="$CACHE/pm2/node_modules/.bin/pm2"
  if [[ ! -x $PM2 ]]; then
    log "installing pm2@latest from npm into $CACHE/pm2"
    mkdir -p "$CACHE/pm2"
    timeout 300 npm install --prefix "$CACHE/pm2" --no-audit --no-fund --loglevel=error pm2@latest >&2 ||
      die "npm install pm2 failed"
  fi
  PM2_VERSION=$(node -p "require('$CACHE/pm2/node_modules/pm2/package.json').version")
}

# stop_daemons: `pm2 kill` and `fleet kill`, only for a daemon that is up (neither
# command should start one).
stop_daemons() {
  if [[ -n ${PM2:-} ]] && pid_alive "$({ tr -dc '0-9' <"$PM2_HOME/pm2.pid"; } 2>/dev/null)"; then
    timeout 30 "$PM2" kill >/dev/null 2>&1
  fi
  if [[ -x ${FLEET:-} ]] && pid_alive "$({ tr -dc '0-9' <"$FLEET_HOME/agent.pid"; } 2>/dev/null)"; then
    timeout 30 "$FLEET" kill >/dev/null 2>&1
  fi
}

# install_cleanup [hook]: on exit, Ctrl-C or TERM, run `hook` (what the run started
# itself), stop both daemons and sweep every marked process, keeping the exit status.
install_cleanup() {
  CLEANUP_HOOK=${1:-}
  trap run_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
run_cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  [[ -n $CLEANUP_HOOK ]] && "$CLEANUP_HOOK"
  stop_daemons
  sweep_marked
  exit "$rc"
}

# sweep_marked: the safety net of every cleanup: stop any process still carrying
# FLEET_BENCH_MARK=$WORK in its environment (daemons, apps, load generators), then
# remove $WORK.
sweep_marked() {
  local p left=()
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [[ $p == "$$" || $p == "$BASHPID" ]] && continue
    if { tr '\0' '\n' <"/proc/$p/environ"; } 2>/dev/null | grep -qxF "FLEET_BENCH_MARK=$WORK"; then
      left+=("$p")
    fi
  done
  if ((${#left[@]})); then
    log "stopping ${#left[@]} leftover process(es): ${left[*]}"
    kill -TERM "${left[@]}" 2>/dev/null
    sleep 1
    kill -KILL "${left[@]}" 2>/dev/null
  fi
  rm -rf "$WORK"
}

# print_table <header> <rows...>: a Markdown table, columns padded to their widest cell;
# the header and rows are `|`-separated cells.
print_table() {
  local header=$1 rule
  shift
  rule=$(sed 's/[^|]*/---/g' <<<"$header")
  printf '%s\n' "$header" "$rule" "$@" | awk -F'|' '
    { for (i = 1; i <= NF; i++) { c[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n = NR; nf = NF }
    END {
      for (r = 1; r <= n; r++) {
        line = "|"
        for (i = 1; i <= nf; i++) {
          v = c[r, i]
          if (v == "---") { s = ""; for (k = 0; k < w[i]; k++) s = s "-"; v = s }
          line = line sprintf(" %-" w[i] "s |", v)
        }
        print line
      }
    }'
}

# Busy time of the whole machine (all CPUs, in clock ticks) from /proc/stat.
busy_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
CLK_TCK=$(getconf CLK_TCK)
