#!/bin/bash
# Quiet sequential re-runs, wave 6, release build (features peers) of main HEAD in /work/wt-integ.
cd /work/wt-integ
export TXIPC_RUNTIME_DIR=/tmp/txipc-rt-q6
T=target/release/txipc
run() { name=$1; shift; echo "=== $(date +%T) $name: $*" >> bench/results/quiet-w6/progress; ( time "$@" ) > bench/results/quiet-w6/$name.json 2> bench/results/quiet-w6/$name.err; echo "    rc=$? $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)" >> bench/results/quiet-w6/progress; }
run ipc $T --json bench ipc --iterations 20000 --batches 7
run ipc21 $T --json bench ipc --iterations 2000 --batches 21
run ipc_peers $T --json bench ipc --peers --iterations 10000 --batches 7
run kv_get_parts taskset -c 1 target/release/examples/kv_get_parts 101
run rec_tx16_on env -u RUST_BACKTRACE $T bench recovery --heap-mb 16 --runs 40 --fault all --server-cpu 1 --client-cpu 0 --json --takeover on
run rec_tx16_off env -u RUST_BACKTRACE $T bench recovery --heap-mb 16 --runs 40 --fault all --server-cpu 1 --client-cpu 0 --json --takeover off
run rec_comp16_lag0 env -u RUST_BACKTRACE $T bench recovery --policy companion --heap-mb 16 --runs 10 --fault sigkill,segv --json --follow-max-lag 0
run rec_comp16_lag1024 env -u RUST_BACKTRACE $T bench recovery --policy companion --heap-mb 16 --runs 10 --fault sigkill,segv --json --follow-max-lag 1024
run rec_comp128_lag0 env -u RUST_BACKTRACE $T bench recovery --policy companion --heap-mb 128 --runs 10 --fault sigkill,segv --json --follow-max-lag 0
run rec_comp128_lag1024 env -u RUST_BACKTRACE $T bench recovery --policy companion --heap-mb 128 --runs 10 --fault sigkill,segv --json --follow-max-lag 1024
run kv_companion $T bench kv --workload all --policy none,txipc,companion --rounds 5 --ops 200000 --json
run kv_companion_af_lag0 $T bench kv --workload a,f --policy none,companion --rounds 5 --ops 200000 --json --follow-max-lag 0
run kv_companion_af_lag1024 $T bench kv --workload a,f --policy none,companion --rounds 5 --ops 200000 --json --follow-max-lag 1024
for n in 1 2 8; do
  run page_sigsegv_${n}c env TXIPC_PAGE_ARMED=0 $T --json bench kv --workload a --policy none,page --batch 8 --clients $n --records 20000 --ops 200000 --rounds 5
done
run rec_tx1024_on env -u RUST_BACKTRACE $T bench recovery --heap-mb 1024 --runs 40 --fault all --server-cpu 1 --client-cpu 0 --json --takeover on
echo "=== $(date +%T) done" >> bench/results/quiet-w6/progress
