#!/bin/bash
# A/B of companion recovery, alternating main's build and this branch's, one session.
export TXIPC_RUNTIME_DIR=/tmp/txipc-rt-crec
for i in 1 2; do
  for b in main new2; do
    uptime > ab2_${b}_$i.load
    env -u RUST_BACKTRACE /tmp/txipc-crec-$b bench recovery --policy companion --heap-mb 16 --runs 20 --fault sigkill,segv --json > ab2_${b}_$i.json 2> ab2_${b}_$i.err
  done
done
