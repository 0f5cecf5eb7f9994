#!/bin/bash
# Final build (yielding recovery spin) against main's build (7773ea7), alternating.
export TXIPC_RUNTIME_DIR=/tmp/txipc-rt-track
cd /tmp/track-w8
run() { # name binary takeover heap runs
  echo "$(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg) $1" >> ab2.log
  nice -n -10 env -u RUST_BACKTRACE /tmp/txipc-track-$2 bench recovery --heap-mb $4 --runs $5 --fault all \
    --server-cpu 1 --client-cpu 0 --json --takeover $3 > $1.json 2> $1.err
  echo "$(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg) $1 done rc=$?" >> ab2.log
}
for pair in 1 2; do
  run w8f_16_new_off_$pair new2 off 16 40
  run w8f_16_main_off_$pair main off 16 40
  run w8f_16_new_on_$pair new2 on 16 40
  run w8f_16_main_on_$pair main on 16 40
done
run w8f_1g_new_on new2 on 1024 10
run w8f_1g_main_on main on 1024 10
run w8f_1g_new_off new2 off 1024 10
run w8f_1g_main_off main off 1024 10
