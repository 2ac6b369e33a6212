#!/usr/bin/env bash
# bench/deploy/run.sh: `fleet deploy` against `pm2 deploy`, to test-bed hosts, in one run.
#
# Measures the wall time of one deploy of a new commit, from the command's start to its
# exit (what a user waits for), on a test bed of 20 hosts (deploy/testbed: network
# namespaces, each with its own sshd and a private /srv):
#   - `fleet deploy <stage>` to 1, 5 and 20 hosts: the archive strategy (the commit of
#     `ref = "main"` is packed here and streamed to every host, which needs no git), all
#     hosts at once (`batch = "100%"`), then each host's agent reloads the app from the
#     new release's fleet.toml, gated on readiness;
#   - the same deploys run by a fleet-controller (`FLEET_CONTROLLER` set: the CLI packs
#     and uploads once, the controller deploys over SSH with its own key), in the same run,
#     and from the controller's store the time from the deploy's acceptance to its first
#     host's first step;
#   - `pm2 deploy ecosystem.config.js <stage>` (pm2@latest from npm) to 1 and 5 of the
#     same hosts: host after host, each fetching the repository (a clone of this run's
#     repository by its local path: the hosts share the machine's file system), resetting
#     to origin/main and running the post-deploy hook, which starts or reloads the app
#     with the host's own PM2 (`PM2_HOME=/srv/pm2 pm2 startOrReload ecosystem.config.js`).
# Both deploy the same git repository, made for the run in its temporary directory: a
# tiny Node HTTP server answering with the content of version.txt
# (bench/deploy/app/server.js), fleet.toml (app `web`, port 8080, exec_mode = "proxy" so
# a reload starts the new release beside the old one; the deploy stages s1, s5, s20) and
# ecosystem.config.js (app `web`, PORT 8081 so both tools' apps can share a host; the
# deploy stages p1, p5).
#
# Per tool, `setup` of its largest stage first (timed, for information), then per stage
# one untimed warm-up deploy (the first deploy to a host starts its app and, for PM2,
# its daemon), then --runs timed deploys. Before each deploy a new version.txt is
# committed (untimed), so every deploy ships new code; after each one every host of the
# stage must answer HTTP with the new version (checked untimed, within 20 s), else that
# tool's remaining deploys are skipped and the run ends with exit code 1. fleet's deploy returns once the new release is ready; PM2's
# once `startOrReload` returned, maybe before its app listens: the raw output counts the
# hosts still answering with the old version when the command returned.
#
# Prints the medians against the issue's targets (fleet to 20 hosts within 1.5x of fleet
# to 1 host; fleet to 5 hosts at least 10x faster than PM2 to 5 hosts), then every run.
#
# Usage: bench/deploy/run.sh [--runs N] [--hosts N] [--fleet-only] [--no-build]
#   --runs N      timed deploys per stage, each of a new commit; the median counts
#                 (default 3)
#   --hosts N     hosts in the bed and in fleet's largest stage (default 20); the other
#                 stages have 1 and 5 hosts (fewer when N is smaller)
#   --fleet-only  skip PM2 (no npm needed)
#   --no-build    use the existing release binaries (target/release/fleet, fleet-agent)
#
# Needs root, the test bed's tools (deploy/testbed/README.md), git, node, curl and jq or
# python3. fleet-agent reaches the hosts through `fleet deploy <stage> setup`, which
# uploads the agent found beside `fleet`; if that setup fails, the run says so and starts
# the release agent on each host itself, so the deploys can still be measured. On exit,
# whatever happens, the bed is torn down (which stops every agent, daemon and app on the
# hosts), the local PM2 daemon is stopped, any process carrying this run's mark is killed
# and the temporary directory is removed. Exits 1 when a deploy failed or served the
# wrong version (the figures would mean nothing), 0 otherwise, targets missed or not.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME with a '.' separator

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE="$ROOT/bench/.cache"
# shellcheck source=../lib.sh
source "$ROOT/bench/lib.sh"
TESTBED="$ROOT/deploy/testbed/testbed"
APP_JS="$HERE/app/server.js"

RUNS=3
HOSTS=20
WITH_PM2=1
BUILD=1
FLEET_PORT=8080
PM2_PORT=8081
VERIFY_TIMEOUT=20 # seconds for every host of a stage to answer with the new version
HOST_FLEET_HOME=/srv/fleet/home # the testbed's, on every host's private /srv
HOST_PM2_HOME=/srv/pm2
while (($#)); do
  case "$1" in
    --runs) RUNS=${2:?--runs needs a number}; shift ;;
    --hosts) HOSTS=${2:?--hosts needs a number}; shift ;;
    --fleet-only) WITH_PM2=0 ;;
    --no-build) BUILD=0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "--runs takes a positive integer" >&2; exit 2; }
if [[ ! $HOSTS =~ ^[1-9][0-9]*$ ]] || ((HOSTS > 253)); then
  echo "--hosts takes an integer from 1 to 253" >&2
  exit 2
fi

(($(id -u) == 0)) || die "the test bed needs root (namespaces, bridges, mounts)"
for tool in git node curl; do
  command -v "$tool" >/dev/null || die "needs $tool"
done
command -v jq >/dev/null || command -v python3 >/dev/null || die "needs jq or python3 (to read --json output)"
[[ -f $APP_JS ]] || die "missing $APP_JS"

# --- private state, set before anything can start ----------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fleet-bench-deploy.XXXXXX")
chmod 755 "$WORK" # the hosts clone the repository from here (PM2)
BED="$WORK/bed"   # the test bed's state dir (testbed records its number there)
REPO="$WORK/repo" # the app's repository, deployed by both tools
# Everything this run starts locally carries this mark in its environment (the bed's
# sshd too; what runs in an SSH session does not, but the bed's teardown kills that).
export FLEET_BENCH_MARK="$WORK"
export FLEET_HOME="$WORK/fleet-home" # never the user's own agent
export PM2_HOME="$WORK/pm2-home"     # `pm2 deploy` connects to (and so starts) a local daemon
unset FLEET_CONTROLLER FLEET_TOKEN FLEET_CA FLEET_CONFIG TESTBED_ID TESTBED_DIR
# git for this run's commits and fleet's archive: no user or system config (hooks,
# signing, templates).
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL="$WORK/gitconfig"
export GIT_AUTHOR_NAME=fleet-bench GIT_AUTHOR_EMAIL=bench@localhost
export GIT_COMMITTER_NAME=fleet-bench GIT_COMMITTER_EMAIL=bench@localhost
# pm2-deploy appends to /tmp/pm2-deploy-$USER.log (here and, through the shared /tmp, on
# the hosts): a name of this run's own, removed on exit.
PM2_LOG_USER="bench-${WORK##*/}"
PM2_DEPLOY_LOG="/tmp/pm2-deploy-$PM2_LOG_USER.log"

FLEET="$ROOT/target/release/fleet"
AGENT="$ROOT/target/release/fleet-agent"
CONTROLLER="$ROOT/target/release/fleet-controller"
CTL_PID=""
PM2=""
BED_UP=0

bed() { "$TESTBED" --dir "$BED" "$@"; }

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  cd /
  [[ -n $CTL_PID ]] && kill "$CTL_PID" 2>/dev/null && wait "$CTL_PID" 2>/dev/null
  stop_daemons
  if ((BED_UP)) || [[ -f $BED/id ]]; then
    local id
    id=$(cat "$BED/id" 2>/dev/null || echo "?")
    bed down >"$WORK/down.log" 2>&1 || {
      cat "$WORK/down.log" >&2
      log "testbed down failed; run: $TESTBED down --id $id"
    }
  fi
  rm -f "$PM2_DEPLOY_LOG"
  sweep_marked
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers -----------------------------------------------------------------
# pctl <p> <file of numbers>: nearest-rank percentile ("-" when empty)
pctl() {
  sort -n "$2" | awk -v p="$1" '{ v[NR] = $1 } END {
    if (!NR) { print "-"; exit }
    r = p / 100 * NR; i = int(r); if (i < r) i++; if (i < 1) i = 1
    print v[i] }'
}

# wait_for <what> <seconds> <command...>: poll until the command succeeds.
wait_for() {
  local what=$1 until=$(($(now_us) + $2 * 1000000))
  shift 2
  until "$@" >/dev/null 2>&1; do
    (($(now_us) > until)) && { log "timed out waiting for $what"; return 1; }
    sleep 0.05
  done
}

ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f\n", (b - a) * 1000 }'; } # two EPOCHREALTIMEs

# json_get <file> <key>: a top-level value of a JSON object as text ("" when missing).
json_get() {
  if command -v jq >/dev/null; then
    jq -r --arg k "$2" 'if type == "object" and has($k) and .[$k] != null then .[$k] | tostring else "" end' "$1" 2>/dev/null || true
  else
    python3 - "$1" "$2" <<'EOF' 2>/dev/null || true
import json, sys
v = json.load(open(sys.argv[1])).get(sys.argv[2])
print("" if v is None else (str(v).lower() if isinstance(v, bool) else v))
EOF
  fi
}

# json_hosts <file>: one line per host of a `fleet deploy --json` summary.
json_hosts() {
  if command -v jq >/dev/null; then
    jq -r '.hosts[]? | "  \(.host // "?"): \(.result // "?") (step \(.step // "-")) \(.error // "")"' "$1" 2>/dev/null || true
  else
    python3 - "$1" <<'EOF' 2>/dev/null || true
import json, sys
for h in json.load(open(sys.argv[1])).get("hosts") or []:
    print("  %s: %s (step %s) %s" % (h.get("host", "?"), h.get("result", "?"), h.get("step") or "-", h.get("error") or ""))
EOF
  fi
}

# http_get <address> <port>: the body of GET /, whitespace trimmed.
http_get() {
  curl -sS --noproxy '*' --max-time 2 "http://$1:$2/" 2>/dev/null | tr -d '\r\n'
}

# verify <port> <version> <addresses...>: every host answers <version> within
# VERIFY_TIMEOUT seconds (untimed). LATE: how many did not at the first look.
LATE=0
verify() {
  local port=$1 want=$2 a got deadline pending=()
  shift 2
  for a in "$@"; do # a first look at every host, right after the deploy returned
    [[ $(http_get "$a" "$port") == "$want" ]] || pending+=("$a")
  done
  LATE=${#pending[@]}
  deadline=$(($(now_us) + VERIFY_TIMEOUT * 1000000))
  for a in "${pending[@]}"; do
    until got=$(http_get "$a" "$port") && [[ $got == "$want" ]]; do
      if (($(now_us) > deadline)); then
        log "$a:$port answers '${got:-nothing}' ${VERIFY_TIMEOUT}s after the deploy, not '$want'"
        return 1
      fi
      sleep 0.1
    done
  done
}

# new_commit <label>: a new version.txt, committed; sets VERSION and COMMIT.
SEQ=0
VERSION="" COMMIT=""
new_commit() {
  SEQ=$((SEQ + 1))
  VERSION="v$SEQ-$1-$(now_us)"
  echo "$VERSION" >"$REPO/version.txt"
  git -C "$REPO" commit -q -a -m "bench: $VERSION"
  COMMIT=$(git -C "$REPO" rev-parse HEAD)
}

# --- build -------------------------------------------------------------------
if ((BUILD)); then
  build_fleet fleet-cli fleet-agent fleet-controller
fi
for b in "$FLEET" "$AGENT" "$CONTROLLER"; do
  [[ -x $b ]] || die "missing $b (run without --no-build)"
done
FLEET_VERSION=$("$FLEET" --version 2>/dev/null | head -1 || echo fleet)
PM2_VERSION=""
((WITH_PM2)) && install_pm2

T_START=$(now_us)
declare -A R          # R[metric]
declare -A STAGE_HOSTS # stage -> its addresses, space-separated
FAILED=""             # why the run stopped measuring a tool, if it did

# --- the test bed --------------------------------------------------------------
log "test bed: $HOSTS hosts (no agent: \`fleet deploy ... setup\` installs it)"
t0=$(now_us)
BED_UP=1
bed up "$HOSTS" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; die "testbed up failed"; }
BED_ID=$(<"$BED/id")
R[bed_up_s]=$(awk -v us=$(($(now_us) - t0)) 'BEGIN { printf "%.1f", us / 1e6 }')
mapfile -t ADDR < <(awk '{ print $2 }' "$BED/hosts")
((${#ADDR[@]} == HOSTS)) || die "the bed lists ${#ADDR[@]} hosts, not $HOSTS"
BRIDGE="198.18.$BED_ID.254" # the root namespace's address on the bed (the controller's)
log "bed $BED_ID is up in ${R[bed_up_s]} s"

FIVE=$((HOSTS < 5 ? HOSTS : 5))
mapfile -t FLEET_SIZES < <(printf '%s\n' 1 "$FIVE" "$HOSTS" | sort -nu)
mapfile -t PM2_SIZES < <(printf '%s\n' 1 "$FIVE" | sort -nu)

# --- the repository ----------------------------------------------------------------
quoted() { printf '"%s", ' "$@" | sed 's/, $//'; }
squoted() { printf "'%s', " "$@" | sed 's/, $//'; }
mkdir -p "$REPO" "$FLEET_HOME" "$PM2_HOME"
: >"$GIT_CONFIG_GLOBAL"
git init -q -b main "$REPO"
cp "$APP_JS" "$REPO/server.js"
{
  cat <<EOF
# The app and the deploy stages of bench/deploy/run.sh, for test bed $BED_ID.

[apps.web]
script = "server.js"
port = $FLEET_PORT
# The agent keeps port $FLEET_PORT and balances it over the instance's private PORT: a
# reload starts the new release beside the old one, which serves until the new is ready.
exec_mode = "proxy"
EOF
  for n in "${FLEET_SIZES[@]}"; do
    STAGE_HOSTS[s$n]="${ADDR[*]:0:n}"
    cat <<EOF

[deploy.s$n]
host = [$(quoted "${ADDR[@]:0:n}")]
user = "root"
key = "$BED/client_key"
ssh_options = ["UserKnownHostsFile=$BED/known_hosts"]
fleet_home = "$HOST_FLEET_HOME"
path = "/srv/fleet-app"
ref = "main"
batch = "100%"
keep_releases = 5
EOF
  done
} >"$REPO/fleet.toml"
{
  cat <<EOF
// The app and the deploy stages of bench/deploy/run.sh for PM2, test bed $BED_ID.
module.exports = {
  apps: [{ name: 'web', script: 'server.js', env: { PORT: '$PM2_PORT' } }],
  deploy: {
EOF
  for n in "${PM2_SIZES[@]}"; do
    STAGE_HOSTS[p$n]="${ADDR[*]:0:n}"
    cat <<EOF
    p$n: {
      user: 'root',
      host: [$(squoted "${ADDR[@]:0:n}")],
      key: '$BED/client_key',
      ssh_options: ['UserKnownHostsFile=$BED/known_hosts', 'StrictHostKeyChecking=yes', 'IdentitiesOnly=yes', 'BatchMode=yes', 'LogLevel=ERROR'],
      repo: '$REPO',
      path: '/srv/pm2-app',
      ref: 'origin/main',
      'post-deploy': 'PM2_HOME=$HOST_PM2_HOME ${PM2:-pm2} startOrReload ecosystem.config.js',
    },
EOF
  done
  echo "  },"
  echo "};"
} >"$REPO/ecosystem.config.js"
echo "initial" >"$REPO/version.txt"
git -C "$REPO" add -A
git -C "$REPO" commit -q -m "bench: the app"
cd "$REPO" # both tools deploy the repository of the current directory

# --- fleet -------------------------------------------------------------------------
# Starts the release agent on every host, as `testbed up --agent` would: the fallback
# when `fleet deploy <stage> setup` failed.
start_agents() {
  local i
  for ((i = 1; i <= HOSTS; i++)); do
    bed exec "h$i" -- setsid "$AGENT" --home "$HOST_FLEET_HOME" --daemon \
      </dev/null >>"$WORK/agent-h$i.out" 2>&1 &
  done
  for ((i = 1; i <= HOSTS; i++)); do
    wait_for "h$i's agent" 30 bed exec "h$i" -- test -S "$HOST_FLEET_HOME/agent.sock" ||
      die "the agent did not start on h$i: $(tail -n 5 "$WORK/agent-h$i.out" 2>/dev/null)"
  done
}

# fleet_deploy <stage> <label>: a new commit, the deploy (timed), its checks. Sets
# R[fleet.<stage>.<label>.ms] and .late; returns 1 (logged) if it failed.
fleet_deploy() {
  local stage=$1 label=$2 out="$WORK/fleet-$1-$2" rc=0 t0 t1 b0 b1 ms ok commit
  new_commit "$stage-$label"
  b0=$(busy_jiffies)
  t0=$EPOCHREALTIME
  LAST_T0=$t0
  "$FLEET" deploy --json "$stage" >"$out.json" 2>"$out.err" || rc=$?
  t1=$EPOCHREALTIME
  b1=$(busy_jiffies)
  ms=$(ms_between "$t0" "$t1")
  R[fleet.$stage.$label.ms]=$ms
  # Every host of the bed shares this machine's CPUs: what all of them (sshd, shells,
  # agents, the apps starting) and the deployer used, in ms of CPU.
  R[fleet.$stage.$label.cpu_ms]=$(((b1 - b0) * 1000 / CLK_TCK))
  ok=$(json_get "$out.json" ok)
  commit=$(json_get "$out.json" commit)
  if ((rc != 0)) || [[ $ok != true ]] || [[ -n $commit && $COMMIT != "$commit"* ]]; then
    log "fleet deploy $stage ($label) failed after $ms ms: exit $rc, ok=${ok:-?}, commit ${commit:-?} (expected ${COMMIT:0:12})"
    json_hosts "$out.json" >&2
    head -c 2000 "$out.err" >&2
    [[ -s $out.json && -z $ok ]] && head -c 2000 "$out.json" >&2
    return 1
  fi
  # shellcheck disable=SC2086 # the stage's addresses, split on purpose
  verify "$FLEET_PORT" "$VERSION" ${STAGE_HOSTS[$stage]} || {
    log "fleet deploy $stage ($label) exited 0 but not every host serves $VERSION"
    return 1
  }
  R[fleet.$stage.$label.late]=$LATE
  log "fleet deploy $stage ($label): $ms ms"
}

fleet_phase() {
  local n stage r top="s${FLEET_SIZES[-1]}" rc=0 t0 t1
  log "fleet: setup of $top"
  t0=$EPOCHREALTIME
  "$FLEET" deploy "$top" setup >"$WORK/fleet-setup.out" 2>&1 || rc=$?
  t1=$EPOCHREALTIME
  R[fleet.setup.ms]=$(ms_between "$t0" "$t1")
  if ((rc != 0)); then
    R[fleet.setup.failed]=$rc
    log "fleet deploy $top setup FAILED (exit $rc):"
    head -c 3000 "$WORK/fleet-setup.out" >&2
    log "starting $AGENT on every host instead (as testbed up --agent would), to measure the deploys"
    start_agents
  fi
  for n in "${FLEET_SIZES[@]}"; do
    stage=s$n
    log "fleet: $stage ($n host(s)): warm-up, then $RUNS timed deploys"
    fleet_deploy "$stage" warmup || { FAILED="fleet deploy $stage (warm-up) failed"; return 1; }
    : >"$WORK/fleet-$stage.ms"
    for ((r = 1; r <= RUNS; r++)); do
      fleet_deploy "$stage" "run$r" || { FAILED="fleet deploy $stage (run $r) failed"; return 1; }
      echo "${R[fleet.$stage.run$r.ms]}" >>"$WORK/fleet-$stage.ms"
    done
    R[fleet.$stage.median]=$(pctl 50 "$WORK/fleet-$stage.ms")
    : >"$WORK/fleet-$stage.cpu"
    for ((r = 1; r <= RUNS; r++)); do echo "${R[fleet.$stage.run$r.cpu_ms]}" >>"$WORK/fleet-$stage.cpu"; done
    R[fleet.$stage.cpu_median]=$(pctl 50 "$WORK/fleet-$stage.cpu")
  done
}

# --- fleet through a controller ---------------------------------------------------------
# The same deploys run by a fleet-controller in the root namespace (on the bed's bridge),
# with the bed's client key as its deploy key and the bed's host keys added: the CLI
# packs and uploads, the controller deploys over SSH. Also, from the controller's store:
# when the deploy was accepted (archive received) and when its first host's first step
# began.
controller_phase() {
  local n stage r port
  CTL_DATA="$WORK/controller"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$CONTROLLER" known-hosts add "$BED/known_hosts" --data "$CTL_DATA" >/dev/null
  CTL_TOKEN=$("$CONTROLLER" token create --name bench --role deploy --data "$CTL_DATA")
  "$CONTROLLER" --listen "$BRIDGE:$port" --data "$CTL_DATA" --deploy-key "$BED/client_key" \
    >"$WORK/controller.log" 2>&1 &
  CTL_PID=$!
  wait_for "the controller" 30 bash -c "test -s '$CTL_DATA/ca.pem' && exec 3<>/dev/tcp/$BRIDGE/$port" ||
    { FAILED="the controller did not start: $(tail -n 5 "$WORK/controller.log")"; return 1; }
  export FLEET_CONTROLLER="https://$BRIDGE:$port" FLEET_TOKEN="$CTL_TOKEN" FLEET_CA="$CTL_DATA/ca.pem"
  for n in "${FLEET_SIZES[@]}"; do
    stage=s$n
    log "fleet via the controller: $stage ($n host(s)): warm-up, then $RUNS timed deploys"
    fleet_deploy "$stage" ctl-warmup || { FAILED="controller deploy $stage (warm-up) failed"; break; }
    : >"$WORK/ctl-$stage.ms"
    : >"$WORK/ctl-$stage.first"
    for ((r = 1; r <= RUNS; r++)); do
      fleet_deploy "$stage" "ctl$r" || { FAILED="controller deploy $stage (run $r) failed"; break 2; }
      echo "${R[fleet.$stage.ctl$r.ms]}" >>"$WORK/ctl-$stage.ms"
      first_step >>"$WORK/ctl-$stage.first"
    done
    R[ctl.$stage.median]=$(pctl 50 "$WORK/ctl-$stage.ms")
    R[ctl.$stage.first_median]=$(awk '{ print $1 }' "$WORK/ctl-$stage.first" | sort -n | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : "-") }')
    R[ctl.$stage.first_max]=$(awk '{ print $1 }' "$WORK/ctl-$stage.first" | sort -n | tail -1)
    R[ctl.$stage.upload_median]=$(awk '{ print $2 }' "$WORK/ctl-$stage.first" | sort -n | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : "-") }')
  done
  unset FLEET_CONTROLLER FLEET_TOKEN FLEET_CA
  kill "$CTL_PID" 2>/dev/null
  wait "$CTL_PID" 2>/dev/null
  CTL_PID=""
  [[ -z $FAILED ]]
}

# first_step: for the controller's newest run, ms from its acceptance to its first
# step event, and from the CLI's start (LAST_T0) to its acceptance (pack + upload).
first_step() {
  python3 - "$CTL_DATA/controller.db" "$LAST_T0" <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
run, created = db.execute("SELECT id, created_at FROM deploy_runs ORDER BY id DESC LIMIT 1").fetchone()
first = db.execute("SELECT min(at) FROM deploy_events WHERE run_id = ? AND event LIKE '%\"kind\":\"step\"%'", (run,)).fetchone()[0]
last = db.execute("SELECT max(at) FROM deploy_events WHERE run_id = ?", (run,)).fetchone()[0]
finished = db.execute("SELECT finished_at FROM deploy_runs WHERE id = ?", (run,)).fetchone()[0]
t0 = float(sys.argv[2]) * 1000
print(f"{first - created} {created - t0:.0f} {last - created} {finished - created} {t0:.0f}")
PY
}

# Stops fleet's agents and apps on the hosts, so PM2 has the machine to itself.
stop_fleet_on_hosts() {
  local i
  for ((i = 1; i <= HOSTS; i++)); do
    # shellcheck disable=SC2016 # expanded by the host's shell
    if bed exec "h$i" -- sh -c 'p=$(cat "$1/agent.pid" 2>/dev/null) && kill -0 "$p"' sh "$HOST_FLEET_HOME" 2>/dev/null; then
      timeout 30 "$TESTBED" --dir "$BED" exec "h$i" -- "$FLEET" kill >/dev/null 2>&1 || log "fleet kill on h$i failed"
    fi
  done
}

# --- PM2 ---------------------------------------------------------------------------
pm2_run() { USER=$PM2_LOG_USER "$PM2" deploy ecosystem.config.js "$@"; }

# pm2_deploy <stage> <label>: as fleet_deploy, with `pm2 deploy`.
pm2_deploy() {
  local stage=$1 label=$2 out="$WORK/pm2-$1-$2.out" rc=0 t0 t1 ms
  new_commit "$stage-$label"
  t0=$EPOCHREALTIME
  pm2_run "$stage" >"$out" 2>&1 || rc=$?
  t1=$EPOCHREALTIME
  ms=$(ms_between "$t0" "$t1")
  R[pm2.$stage.$label.ms]=$ms
  if ((rc != 0)); then
    log "pm2 deploy $stage ($label) failed after $ms ms (exit $rc):"
    tail -n 30 "$out" >&2
    return 1
  fi
  # shellcheck disable=SC2086 # the stage's addresses, split on purpose
  verify "$PM2_PORT" "$VERSION" ${STAGE_HOSTS[$stage]} || {
    log "pm2 deploy $stage ($label) exited 0 but not every host serves $VERSION:"
    tail -n 30 "$out" >&2
    return 1
  }
  R[pm2.$stage.$label.late]=$LATE
  log "pm2 deploy $stage ($label): $ms ms"
}

pm2_phase() {
  local n stage r top="p${PM2_SIZES[-1]}" rc=0 t0 t1
  log "pm2: setup of $top"
  t0=$EPOCHREALTIME
  pm2_run "$top" setup >"$WORK/pm2-setup.out" 2>&1 || rc=$?
  t1=$EPOCHREALTIME
  R[pm2.setup.ms]=$(ms_between "$t0" "$t1")
  if ((rc != 0)); then
    tail -n 30 "$WORK/pm2-setup.out" >&2
    FAILED="pm2 deploy $top setup failed (exit $rc)"
    return 1
  fi
  for n in "${PM2_SIZES[@]}"; do
    stage=p$n
    log "pm2: $stage ($n host(s)): warm-up, then $RUNS timed deploys"
    pm2_deploy "$stage" warmup || { FAILED="pm2 deploy $stage (warm-up) failed"; return 1; }
    : >"$WORK/pm2-$stage.ms"
    for ((r = 1; r <= RUNS; r++)); do
      pm2_deploy "$stage" "run$r" || { FAILED="pm2 deploy $stage (run $r) failed"; return 1; }
      echo "${R[pm2.$stage.run$r.ms]}" >>"$WORK/pm2-$stage.ms"
    done
    R[pm2.$stage.median]=$(pctl 50 "$WORK/pm2-$stage.ms")
  done
}

stop_pm2_on_hosts() {
  local i
  for ((i = 1; i <= ${PM2_SIZES[-1]}; i++)); do
    if bed exec "h$i" -- test -f "$HOST_PM2_HOME/pm2.pid" 2>/dev/null; then
      timeout 30 "$TESTBED" --dir "$BED" exec "h$i" -- env PM2_HOME="$HOST_PM2_HOME" "$PM2" kill >/dev/null 2>&1 ||
        log "pm2 kill on h$i failed"
    fi
  done
}

# --- the runs ------------------------------------------------------------------------
FLEET_OK=1 PM2_OK=1
fleet_phase || { FLEET_OK=0; log "$FAILED; no more fleet deploys"; }
FLEET_FAILED=$FAILED FAILED=""
CTL_OK=1
if ((FLEET_OK)); then
  controller_phase || { CTL_OK=0; log "$FAILED; no more controller deploys"; }
fi
CTL_FAILED=$FAILED FAILED=""
if ((WITH_PM2)); then
  log "stopping fleet on the hosts"
  stop_fleet_on_hosts
  pm2_phase || { PM2_OK=0; log "$FAILED; no more PM2 deploys"; }
  log "stopping PM2 on the hosts"
  stop_pm2_on_hosts
fi
PM2_FAILED=$FAILED

# --- report ------------------------------------------------------------------
get() { echo "${R[$1]:--}"; }
ok() { if [[ $1 != *-* && $1 != *n/a* ]] && awk "BEGIN { exit !($1) }" 2>/dev/null; then echo PASS; else echo FAIL; fi; }
ratio() { [[ $1 == - || $2 == - || $2 == 0 ]] && echo - || awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
median_of() { # <tool> <stage>: "1234 ms" or why there is none
  local m=${R[$1.$2.median]:-}
  if [[ -n $m ]]; then echo "$m ms"
  elif [[ $1 == pm2 ]] && ((!WITH_PM2)); then echo "not run (--fleet-only)"
  else echo "FAILED (see the log)"; fi
}

F1=$(get fleet.s1.median) FTOP=$(get "fleet.s$HOSTS.median") F5=$(get "fleet.s$FIVE.median") P5=$(get "pm2.p$FIVE.median")
SCALE=$(ratio "$FTOP" "$F1")
SPEEDUP=$(ratio "$P5" "$F5")

ROWS=()
row() { ROWS+=("$1|$2|$3|$4"); }
if [[ -n ${R[fleet.setup.failed]:-} ]]; then
  row "fleet deploy setup, ${FLEET_SIZES[-1]} host(s)" "FAILED (exit ${R[fleet.setup.failed]}) after $(get fleet.setup.ms) ms; agents started by the bench" "-" "FAIL"
else
  row "fleet deploy setup, ${FLEET_SIZES[-1]} host(s)" "$(get fleet.setup.ms) ms" "-" "info"
fi
for n in "${FLEET_SIZES[@]}"; do
  if ((n == HOSTS && n > 1)); then
    suffix=""
    [[ $SCALE != - ]] && suffix=" (${SCALE}x 1 host)"
    row "fleet deploy, $n hosts, median of $RUNS" "$(median_of fleet "s$n")$suffix" "<= 1.5x 1 host" \
      "$(ok "$FTOP <= 1.5 * $F1")"
  else
    row "fleet deploy, $n host(s), median of $RUNS" "$(median_of fleet "s$n")" "-" "info"
  fi
done
for n in "${FLEET_SIZES[@]}"; do
  c=$(get "ctl.s$n.median") l=$(get "fleet.s$n.median")
  row "fleet deploy via the controller, $n host(s), median of $RUNS" \
    "$c ms ($(ratio "$c" "$l")x the CLI's $l ms)" "<= 1.2x" "$(ok "$c <= 1.2 * $l")"
  row "  accepted -> first host's first step, ms (median / max); pack + upload" \
    "$(get "ctl.s$n.first_median") / $(get "ctl.s$n.first_max"); $(get "ctl.s$n.upload_median") ms" "< 50" \
    "$(ok "$(get "ctl.s$n.first_max") < 50")"
done
# The bed's hosts share this machine's CPUs, so a deploy to many of them cannot end
# before the machine has done every host's share: CPU used / CPUs is that floor.
for n in "${FLEET_SIZES[@]}"; do
  c=$(get "fleet.s$n.cpu_median")
  [[ $c == - ]] && continue
  floor=$(awk -v c="$c" -v n="$(nproc)" 'BEGIN { printf "%.0f", c / n }')
  row "fleet deploy, $n host(s): CPU used by the machine, median" "$c ms (floor on $(nproc) CPUs: $floor ms)" "-" "info"
done
if ((WITH_PM2)); then
  row "pm2 deploy setup, ${PM2_SIZES[-1]} host(s)" "$(get pm2.setup.ms) ms" "-" "info"
  for n in "${PM2_SIZES[@]}"; do
    row "pm2 deploy, $n host(s), median of $RUNS" "$(median_of pm2 "p$n")" "-" "info"
  done
  row "pm2 time / fleet time, $FIVE host(s)" "${SPEEDUP/%[0-9]/&x}" ">= 10x" "$(ok "$P5 >= 10 * $F5")"
else
  row "pm2 time / fleet time, $FIVE host(s)" "not run (--fleet-only)" ">= 10x" "n/a"
fi

echo
echo "deploy benchmark: test bed of $HOSTS hosts, $(nproc) CPUs, $(uname -sr); $FLEET_VERSION${PM2_VERSION:+; pm2 $PM2_VERSION}"
echo "each timed deploy ships a new commit; median of $RUNS runs per stage after one warm-up deploy"
echo
print_table "measurement|result|target|verdict" "${ROWS[@]}"
echo
echo "raw (ms per deploy; [n]: hosts not yet serving the new version when the command returned):"
echo "  bed up ${R[bed_up_s]} s"
runs_of() { # <tool> <stage>
  local r line
  line="warm-up $(get "$1.$2.warmup.ms")[$(get "$1.$2.warmup.late")]; runs:"
  for ((r = 1; r <= RUNS; r++)); do
    [[ -n ${R[$1.$2.run$r.ms]:-} ]] && line+=" ${R[$1.$2.run$r.ms]}[$(get "$1.$2.run$r.late")]"
  done
  echo "$line"
}
for n in "${FLEET_SIZES[@]}"; do printf '  fleet s%-3s %s\n' "$n" "$(runs_of fleet "s$n")"; done
cpu_of() { # <stage>: CPU ms of every timed run
  local r line=""
  for ((r = 1; r <= RUNS; r++)); do line+=" $(get "fleet.$1.run$r.cpu_ms")"; done
  echo "$line"
}
for n in "${FLEET_SIZES[@]}"; do printf '  fleet s%-3s CPU ms per run:%s\n' "$n" "$(cpu_of "s$n")"; done
if ((WITH_PM2)); then
  for n in "${PM2_SIZES[@]}"; do printf '  pm2   p%-3s %s\n' "$n" "$(runs_of pm2 "p$n")"; done
fi
for n in "${FLEET_SIZES[@]}"; do
  [[ -s $WORK/ctl-s$n.first ]] || continue
  printf '  ctl   s%-3s accepted->first step, pack+upload ms per run: %s\n' "$n" "$(tr '\n' ';' <"$WORK/ctl-s$n.first")"
done
((FLEET_OK)) || echo "  fleet stopped: $FLEET_FAILED"
((CTL_OK)) || echo "  controller deploys stopped: $CTL_FAILED"
((PM2_OK)) || echo "  pm2 stopped: $PM2_FAILED"
echo "  total bench time: $((($(now_us) - T_START) / 1000000)) s"
((FLEET_OK && CTL_OK && PM2_OK)) || exit 1
