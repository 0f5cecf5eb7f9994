#!/bin/bash
# Quiet sequential re-runs, wave 7, release build (features peers) of main HEAD in /work/wt-integ;
# the wave-6 build (/tmp/q7/txipc-w6, 955528e) alternates with it for the IPC A/B.
cd /work/wt-integ
export TXIPC_RUNTIME_DIR=/tmp/txipc-rt-q7
T=target/release/txipc
O=/tmp/q7/txipc-w6
P=/tmp/q7/progress
run() { name=$1; shift; echo "=== $(date +%T) $name: $*" >> $P; ( time "$@" ) > /tmp/q7/$name.json 2> /tmp/q7/$name.err; echo "    rc=$? $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)" >> $P; }
for i in 1 2 3; do
  run ipc_new_$i $T --json bench ipc --iterations 20000 --batches 7
  run ipc_w6_$i $O --json bench ipc --iterations 20000 --batches 7
done
run ipc_peers $T --json bench ipc --peers --iterations 10000 --batches 7
run kv_get_parts taskset -c 1 target/release/examples/kv_get_parts 101
for i in 1 2; do
  run rec_tx16_off_$i env -u RUST_BACKTRACE $T bench recovery --heap-mb 16 --runs 40 --fault all --server-cpu 1 --client-cpu 0 --json --takeover off
  run rec_tx16_on_$i env -u RUST_BACKTRACE $T bench recovery --heap-mb 16 --runs 40 --fault all --server-cpu 1 --client-cpu 0 --json --takeover on
done
run rec_comp16 env -u RUST_BACKTRACE $T bench recovery --policy companion --heap-mb 16 --runs 10 --fault sigkill,segv --json
run rec_comp16_2 env -u RUST_BACKTRACE $T bench recovery --policy companion --heap-mb 16 --runs 10 --fault sigkill,segv --json
run rec_comp128 env -u RUST_BACKTRACE $T bench recovery --policy companion --heap-mb 128 --runs 10 --fault sigkill,segv --json
run kv_companion $T bench kv --workload all --policy none,txipc,companion --rounds 5 --ops 200000 --json
for i in 1 2; do
  run kv_af_new_$i $T bench kv --workload a,f --policy none,companion --rounds 5 --ops 200000 --json
  run kv_af_w6_$i $O bench kv --workload a,f --policy none,companion --rounds 5 --ops 200000 --json
done
for n in 1 2 8; do
  run page_sigsegv_${n}c env TXIPC_PAGE_ARMED=0 $T --json bench kv --workload a --policy none,page --batch 8 --clients $n --records 20000 --ops 200000 --rounds 5
done
run rec_tx1024_off env -u RUST_BACKTRACE $T bench recovery --heap-mb 1024 --runs 40 --fault all --server-cpu 1 --client-cpu 0 --json --takeover off
run rec_tx1024_on env -u RUST_BACKTRACE $T bench recovery --heap-mb 1024 --runs 40 --fault all --server-cpu 1 --client-cpu 0 --json --takeover on
echo "=== $(date +%T) done" >> $P
