#!/usr/bin/env python3
"""Reads `fleet logs <stage> flood -f --json` for bench/fleet/run.sh. Creates GO once
every one of HOSTS hosts said `ready` (every host is followed before the flood), times
each `SEQ WRITTEN_US` line on arrival (the hosts are namespaces of this machine: one
clock), sums the stream's notices of missed lines, and stops once every host's count
file (GO.count.*) exists and the stream has been quiet for QUIET seconds, or after
DEADLINE seconds. Lines written are the numbered lines plus each host's `done` line;
lines actually missed are those written and never received. Prints one line:
`flood: hosts H wrote W received R in S s (L lines/s), p50 X ms p99 Y ms, missed
reported M actual A`. Usage: flood_reader.py HOSTS DEADLINE GO"""
import glob
import json
import queue
import sys
import threading
import time

hosts, deadline, go = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
QUIET = 5.0
lines = queue.Queue()


def pump():
    for raw in sys.stdin:
        lines.put((time.time_ns() // 1000, raw))
    lines.put(None)


threading.Thread(target=pump, daemon=True).start()
ready, latencies = set(), []
received = reported = 0
first = last = None
give_up = time.monotonic() + deadline
quiet_since = time.monotonic()
while time.monotonic() < give_up:
    try:
        item = lines.get(timeout=0.5)
    except queue.Empty:
        counted = len(glob.glob(go + ".count.*"))
        if counted >= hosts and time.monotonic() - quiet_since >= QUIET:
            break
        continue
    if item is None:
        break
    quiet_since = time.monotonic()
    now_us, raw = item
    try:
        entry = json.loads(raw)
    except ValueError:
        continue
    if entry.get("missed"):
        reported += int(entry["missed"])
        continue
    words = (entry.get("line") or "").split()
    if words == ["ready"]:
        ready.add(entry.get("host", ""))
        if len(ready) == hosts:
            open(go, "a").close()  # every host is followed: flood
        continue
    if len(words) == 2 and words[0] == "done":
        received += 1
        continue
    if len(words) != 2 or not words[0].isdigit():
        continue
    latencies.append(now_us - int(words[1]))
    received += 1
    first = first or now_us
    last = now_us
written = 0
for path in glob.glob(go + ".count.*"):
    with open(path) as count:
        written += int(count.read().strip() or 0) + 1  # the numbered lines and `done`
latencies.sort()
pick = lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))] / 1000 if latencies else -1
seconds = (last - first) / 1e6 if first and last and last > first else 0
print(
    "flood: hosts %d wrote %d received %d in %.1f s (%d lines/s), p50 %.1f ms p99 %.1f ms, missed reported %d actual %d"
    % (len(glob.glob(go + ".count.*")), written, received, seconds, received / seconds if seconds else 0,
       pick(0.5), pick(0.99), reported, written - received)
)
