#!/bin/bash
# Quiet sequential re-runs, wave 5, release build (features peers) of main HEAD in /work/wt-integ.
cd /work/wt-integ
export TXIPC_RUNTIME_DIR=/tmp/txipc-rt-q5
T=target/release/txipc
run() { name=$1; shift; echo "=== $(date +%T) $name: $*" >> /tmp/q5/progress; ( time "$@" ) > /tmp/q5/$name.json 2> /tmp/q5/$name.err; echo "    rc=$? $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)" >> /tmp/q5/progress; }
run ipc $T --json bench ipc --iterations 20000 --batches 7
run ipc21 $T --json bench ipc --iterations 2000 --batches 21
run ipc_peers $T --json bench ipc --peers --iterations 10000 --batches 7
run rec_comp16_lag0 env -u RUST_BACKTRACE $T bench recovery --policy companion --heap-mb 16 --runs 10 --fault sigkill,segv --json --follow-max-lag 0
run rec_comp16_lag1024 env -u RUST_BACKTRACE $T bench recovery --policy companion --heap-mb 16 --runs 10 --fault sigkill,segv --json --follow-max-lag 1024
run rec_comp128_lag0 env -u RUST_BACKTRACE $T bench recovery --policy companion --heap-mb 128 --runs 10 --fault sigkill,segv --json --follow-max-lag 0
run rec_comp128_lag1024 env -u RUST_BACKTRACE $T bench recovery --policy companion --heap-mb 128 --runs 10 --fault sigkill,segv --json --follow-max-lag 1024
run rec_tx16 env -u RUST_BACKTRACE $T bench recovery --heap-mb 16 --runs 40 --fault all --server-cpu 1 --client-cpu 0 --json
for n in 1 2 8; do
  run page_sigsegv_${n}c env TXIPC_PAGE_ARMED=0 $T --json bench kv --workload a --policy none,page --batch 8 --clients $n --records 20000 --ops 200000 --rounds 5
done
for n in 1 8; do
  run page_uffd_${n}c env TXIPC_PAGE_TRACKER=uffd TXIPC_PAGE_ARMED=0 $T --json bench kv --workload a --policy none,page --batch 8 --clients $n --records 20000 --ops 200000 --rounds 5
done
for b in 1 8; do run page_kv_b$b target/release/examples/page_kv sigsegv 20000 20000 $b; done
run kv_companion $T bench kv --workload all --policy none,txipc,companion --rounds 5 --ops 200000 --json
run rec_tx1024 env -u RUST_BACKTRACE $T bench recovery --heap-mb 1024 --runs 40 --fault all --server-cpu 1 --client-cpu 0 --json
run kv_companion_af_lag1024 $T bench kv --workload a,f --policy none,companion --rounds 5 --ops 200000 --json --follow-max-lag 1024
echo "=== $(date +%T) done" >> /tmp/q5/progress
