#!/bin/bash
export TXIPC_RUNTIME_DIR=/tmp/txipc-rt-kvget
cd /tmp/kvget-ab
for i in 1 2 3; do
  for b in main-kvget kvget; do
    echo "$(date -u +%T) start $b $i load $(cut -d' ' -f1-3 /proc/loadavg)" >> log
    /tmp/txipc-$b --json bench ipc --iterations 20000 --batches 7 > ab_${b}_$i.json 2> ab_${b}_$i.err
    echo "$(date -u +%T) end $b $i rc $?" >> log
  done
done
echo finished >> log
