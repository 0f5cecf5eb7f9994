#!/bin/bash
# Quiet sequential re-runs, wave 8, release build (features peers) of main HEAD in /work/wt-integ;
# the wave-7 build (/tmp/q8/txipc-w7, 56f43c5) alternates with it for the IPC A/B.
cd /work/wt-integ
export TXIPC_RUNTIME_DIR=/tmp/txipc-rt-q8
T=target/release/txipc
O=/tmp/q8/txipc-w7
P=/tmp/q8/progress
run() { name=$1; shift; echo "=== $(date +%T) $name: $*" >> $P; ( time "$@" ) > /tmp/q8/$name.json 2> /tmp/q8/$name.err; echo "    rc=$? $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)" >> $P; }
for i in 1 2 3; do
  run ipc_new_$i $T --json bench ipc --iterations 20000 --batches 7
  run ipc_w7_$i $O --json bench ipc --iterations 20000 --batches 7
done
run ipc_takeover_on $T --json bench ipc --iterations 20000 --batches 7 --takeover on
run ipc21_new $T --json bench ipc --iterations 2000 --batches 21
run ipc21_w7 $O --json bench ipc --iterations 2000 --batches 21
for i in 1 2; do
  run tx_new_$i taskset -c 1 $T --json bench tx
  run tx_w7_$i taskset -c 1 $O --json bench tx
done
run reply_floor target/release/examples/reply_floor 41 1000 20000
run ipc_peers $T --json bench ipc --peers --iterations 10000 --batches 7
run kv_get_parts taskset -c 1 target/release/examples/kv_get_parts 101
for i in 1 2; do
  run rec_tx16_off_$i env -u RUST_BACKTRACE $T bench recovery --heap-mb 16 --runs 40 --fault all --server-cpu 1 --client-cpu 0 --json --takeover off
  run rec_tx16_on_$i env -u RUST_BACKTRACE $T bench recovery --heap-mb 16 --runs 40 --fault all --server-cpu 1 --client-cpu 0 --json --takeover on
  run rec_tx16_onsleep_$i env -u RUST_BACKTRACE TXIPC_SPARE_SPIN=0 $T bench recovery --heap-mb 16 --runs 40 --fault all --server-cpu 1 --client-cpu 0 --json --takeover on
  run rec_tx16_w7_off_$i env -u RUST_BACKTRACE $O bench recovery --heap-mb 16 --runs 40 --fault all --server-cpu 1 --client-cpu 0 --json --takeover off
done
for i in 1 2; do
  run rec_comp16_new_$i env -u RUST_BACKTRACE $T bench recovery --policy companion --heap-mb 16 --runs 20 --fault sigkill,segv --json
  run rec_comp16_w7_$i env -u RUST_BACKTRACE $O bench recovery --policy companion --heap-mb 16 --runs 20 --fault sigkill,segv --json
done
run rec_comp128 env -u RUST_BACKTRACE $T bench recovery --policy companion --heap-mb 128 --runs 10 --fault sigkill,segv --json
run kv_companion $T bench kv --workload all --policy none,txipc,companion --rounds 5 --ops 200000 --json
for i in 1 2; do
  run kv_af_new_$i $T bench kv --workload a,f --policy none,companion --rounds 5 --ops 200000 --json
  run kv_af_w7_$i $O bench kv --workload a,f --policy none,companion --rounds 5 --ops 200000 --json
done
for n in 1 2 8; do
  run page_sigsegv_${n}c env TXIPC_PAGE_ARMED=0 $T --json bench kv --workload a --policy none,page --batch 8 --clients $n --records 20000 --ops 200000 --rounds 5
done
run rec_tx1024_off env -u RUST_BACKTRACE $T bench recovery --heap-mb 1024 --runs 40 --fault all --server-cpu 1 --client-cpu 0 --json --takeover off
run rec_tx1024_on env -u RUST_BACKTRACE $T bench recovery --heap-mb 1024 --runs 40 --fault all --server-cpu 1 --client-cpu 0 --json --takeover on
echo "=== $(date +%T) done" >> $P
