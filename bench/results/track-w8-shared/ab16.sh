#!/bin/bash
# A/B, alternating: main's build (7773ea7) against this branch's, 16 MiB, 40 runs per fault
# kind; and this build with the spare sleeping (TXIPC_SPARE_SPIN=0).
export TXIPC_RUNTIME_DIR=/tmp/txipc-rt-track
cd /tmp/track-w8
run() { # name binary takeover [env]
  echo "$(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg) $1" >> ab16.log
  env $4 nice -n -10 env -u RUST_BACKTRACE /tmp/txipc-track-$2 bench recovery --heap-mb 16 --runs 40 --fault all \
    --server-cpu 1 --client-cpu 0 --json --takeover $3 > $1.json 2> $1.err
  echo "$(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg) $1 done rc=$?" >> ab16.log
}
for pair in 1 2 3; do
  run w8_16_main_on_$pair main on
  run w8_16_new_on_$pair new on
  run w8_16_newsleep_on_$pair new on TXIPC_SPARE_SPIN=0
  run w8_16_main_off_$pair main off
  run w8_16_new_off_$pair new off
done
