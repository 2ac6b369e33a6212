#!/usr/bin/env python3
"""Reads `fleet logs <stage> flood -f --json` for bench/fleet/run.sh: every line
`SEQ WRITTEN_US` is timed on arrival (hosts are namespaces of this machine: one clock),
notices of missed lines are summed per host, and `done N` says how many a host wrote.
Creates GO once every one of HOSTS hosts said `ready` (so every host is followed
before the flood), stops when every host said done (or after DEADLINE s). Prints:
`flood: hosts H wrote W received R in S s (L lines/s), p50 X ms p99 Y ms, missed
reported M actual A`."""
import json
import sys
import time

hosts_expected, deadline, go = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ready = set()
latencies = []
received = {}
reported = {}
written = {}
first = last = None
give_up = time.monotonic() + deadline
for raw in sys.stdin:
    now_us = time.time_ns() // 1000
    try:
        entry = json.loads(raw)
    except ValueError:
        continue
    host = entry.get("host", "")
    if entry.get("missed"):
        reported[host] = reported.get(host, 0) + int(entry["missed"])
        continue
    line = entry.get("line")
    if line is None:
        continue
    words = line.split()
    if words == ["ready"]:
        ready.add(host)
        if len(ready) == hosts_expected:
            open(go, "w").close()  # every host is followed: flood
        continue
    if len(words) == 2 and words[0] == "done":
        written[host] = int(words[1])
        if len(written) >= hosts_expected:
            break
        continue
    if len(words) != 2 or not words[0].isdigit():
        continue
    latencies.append(now_us - int(words[1]))
    received[host] = received.get(host, 0) + 1
    first = first or now_us
    last = now_us
    if time.monotonic() > give_up:
        break
latencies.sort()
pick = lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))] / 1000 if latencies else -1
total_written = sum(written.values())
total_received = sum(received.values())
seconds = (last - first) / 1e6 if first and last and last > first else 0
actual = total_written - total_received
print(
    "flood: hosts %d wrote %d received %d in %.1f s (%d lines/s), p50 %.1f ms p99 %.1f ms, missed reported %d actual %d"
    % (len(written), total_written, total_received, seconds, total_received / seconds if seconds else 0,
       pick(0.5), pick(0.99), sum(reported.values()), actual)
)
