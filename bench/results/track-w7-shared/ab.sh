#!/bin/bash
# usage: ab.sh BIN TAG HEAP PAIRS
BIN=$1; TAG=$2; HEAP=$3; PAIRS=$4
export TXIPC_RUNTIME_DIR=/tmp/txipc-rt-track
for p in $(seq 1 $PAIRS); do
  for t in on off; do
    echo "$(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg) $TAG $HEAP $t $p" >> progress.txt
    nice -n -10 env -u RUST_BACKTRACE ./$BIN bench recovery --heap-mb $HEAP --runs ${RUNS:-40} --fault all --server-cpu 1 --client-cpu 0 --json --takeover $t > ${TAG}_${HEAP}_${t}_$p.json 2> ${TAG}_${HEAP}_${t}_$p.err
    echo "$(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg) done rc=$?" >> progress.txt
  done
done
