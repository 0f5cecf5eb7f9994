#!/bin/bash
export TXIPC_RUNTIME_DIR=/tmp/txipc-rt-cthru
cd /tmp/cthru-res
run() { local name=$1 bin=$2; shift 2
  echo "$(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg) start $name" >> ab.log
  /tmp/txipc-cthru-$bin "$@" > $name.json 2> $name.err
  echo "$(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg) end $name rc=$?" >> ab.log; }
for i in 3 4; do
  for b in base new2; do run af-$b-$i $b bench kv --workload a,f --policy companion --rounds 3 --ops 100000 --json; done
done
