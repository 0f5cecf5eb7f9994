#!/bin/bash
# usage: ab.sh OUTDIR A_EXE B_EXE ROUNDS
export TXIPC_RUNTIME_DIR=/tmp/txipc-rt-oneline
out=$1; a=$2; b=$3; n=${4:-3}
for i in $(seq 1 $n); do
  for side in a b; do
    exe=$a; [ $side = b ] && exe=$b
    echo "$(date -u +%T) run $i $side $(cat /proc/loadavg)" >> $out/log
    $exe --json bench ipc --iterations 20000 --batches 7 > $out/$side-$i.json 2>$out/$side-$i.err
  done
done
echo done >> $out/log
