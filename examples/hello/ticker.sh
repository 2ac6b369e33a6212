#!/bin/sh
# A tiny app for fleet's quickstart: prints a line a second, exits cleanly on SIGINT.
trap 'echo "ticker $FLEET_APP_INSTANCE: stopping"; exit 0' INT TERM
while true; do
  echo "ticker $FLEET_APP_INSTANCE: $(date +%T) $GREETING"
  sleep 1
done
