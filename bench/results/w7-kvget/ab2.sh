#!/bin/bash
export TXIPC_RUNTIME_DIR=/tmp/txipc-rt-kvget
cd /tmp/kvget-ab
for i in 1 2 3 4; do
  for b in main-kvget kvget; do
    echo "$(date -u +%T) start $b $i load $(cut -d' ' -f1-3 /proc/loadavg)" >> log
    nice -n -20 /tmp/txipc-$b --json bench ipc --iterations 2000 --batches 21 > ab_${b}_$i.json 2> ab_${b}_$i.err
    echo "$(date -u +%T) end $b $i rc $?" >> log
  done
done
echo finished >> log
