#!/bin/bash
out=$1; shift; n=$1; shift; rounds=$1; shift
for i in $(seq 1 $n); do
  for exe in "$@"; do
    echo "== $(date -u +%T) run $i $(basename $exe) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $out
    $exe $rounds >> $out 2>&1
  done
done
echo done >> $out
