#!/bin/bash
cd /work/wt-integ
export TXIPC_RUNTIME_DIR=/tmp/txipc-rt-q6
T=target/release/txipc
run() { name=$1; shift; echo "=== $(date +%T) $name: $*" >> bench/results/quiet-w6/progress; ( time "$@" ) > bench/results/quiet-w6/$name.json 2> bench/results/quiet-w6/$name.err; echo "    rc=$? $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)" >> bench/results/quiet-w6/progress; }
for p in 2 3; do
run rec_tx16_off_$p env -u RUST_BACKTRACE $T bench recovery --heap-mb 16 --runs 40 --fault all --server-cpu 1 --client-cpu 0 --json --takeover off
run rec_tx16_on_$p env -u RUST_BACKTRACE $T bench recovery --heap-mb 16 --runs 40 --fault all --server-cpu 1 --client-cpu 0 --json --takeover on
done
echo "=== $(date +%T) ab done" >> bench/results/quiet-w6/progress
