#!/bin/bash
cd /work/wt-integ
export TXIPC_RUNTIME_DIR=/tmp/txipc-rt-q7
T=target/release/txipc
O=/tmp/q7/txipc-w6
P=/tmp/q7/progress
run() { name=$1; shift; echo "=== $(date +%T) $name: $*" >> $P; ( time "$@" ) > /tmp/q7/$name.json 2> /tmp/q7/$name.err; echo "    rc=$? $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)" >> $P; }
for i in 1 2; do
  run ab_rec_tx16_w6_$i env -u RUST_BACKTRACE $O bench recovery --heap-mb 16 --runs 40 --fault all --server-cpu 1 --client-cpu 0 --json --takeover off
  run ab_rec_tx16_new_$i env -u RUST_BACKTRACE $T bench recovery --heap-mb 16 --runs 40 --fault all --server-cpu 1 --client-cpu 0 --json --takeover off
  run ab_rec_comp16_w6_$i env -u RUST_BACKTRACE $O bench recovery --policy companion --heap-mb 16 --runs 20 --fault sigkill,segv --json
  run ab_rec_comp16_new_$i env -u RUST_BACKTRACE $T bench recovery --policy companion --heap-mb 16 --runs 20 --fault sigkill,segv --json
done
echo "=== $(date +%T) ab done" >> $P
