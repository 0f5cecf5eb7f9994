#!/bin/sh
export TXIPC_RUNTIME_DIR=/tmp/txipc-rt-companion
kv() { echo "== kv $1 lag $2 $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"; ./txipc-$1 --json bench kv --workload a,f --policy none,companion --rounds 3 --ops 100000 --follow-max-lag $2 > ab2-kv-$1-lag$2-$(date +%s).json 2>> ab2.err; }
rec() { echo "== rec $1 lag $2 $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"; env -u RUST_BACKTRACE ./txipc-$1 bench recovery --policy companion --heap-mb 16 --runs 10 --fault sigkill,segv --json --follow-max-lag $2 > ab2-rec-$1-lag$2-$(date +%s).json 2>> ab2.err; }
kv pre 0; kv w6 0; kv pre 0; kv w6 0
rec w6 0; rec w6 1024
kv w6 1024; kv w6 0; kv w6 1024
echo "done $(date -u +%T)"
