#!/bin/bash
# A/B of base (main before wave 8's cthru commits, ebbd971) and new (778a099), alternating.
export TXIPC_RUNTIME_DIR=/tmp/txipc-rt-cthru
cd /tmp/cthru-res
run() { # name bin args...
  local name=$1 bin=$2; shift 2
  echo "$(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg) start $name" >> ab.log
  /tmp/txipc-cthru-$bin "$@" > $name.json 2> $name.err
  echo "$(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg) end $name rc=$?" >> ab.log
}
for i in 1 2; do
  for b in base new; do run af-$b-$i $b bench kv --workload a,f --policy companion --rounds 3 --ops 100000 --json; done
  for b in base new; do run e-$b-$i $b bench kv --workload e --policy companion --rounds 3 --ops 20000 --json; done
done
for b in base new; do run rec-$b $b bench recovery --policy companion --heap-mb 16 --runs 10 --fault sigkill,segv --json; done
