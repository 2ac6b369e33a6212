#!/usr/bin/env python3
"""A flooding app for bench/fleet/run.sh: says `ready` until GO (a file) exists, then
writes RATE numbered lines a second for SECONDS, each `SEQ WRITTEN_US`, one write per
line, then `done SEQ`, records SEQ in GO.count.PID (the reader's count of what was
written, even if the `done` line is lost on the way) and sleeps.
Usage: flood.py GO RATE SECONDS"""
import os
import sys
import time

go, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
# `ready` until the reader, having heard every host, creates GO.
while not os.path.exists(go):
    print("ready", flush=True)
    time.sleep(0.1)
start = time.monotonic()
seq = 0
out = sys.stdout
while True:
    elapsed = time.monotonic() - start
    if elapsed >= seconds:
        break
    due = int(elapsed * rate)
    while seq < due:
        seq += 1
        out.write("%d %d\n" % (seq, time.time_ns() // 1000))
        out.flush()
    time.sleep(0.001)
out.write("done %d\n" % seq)
out.flush()
with open("%s.count.%d" % (go, os.getpid()), "w") as count:
    count.write("%d\n" % seq)
time.sleep(100000)
