#!/bin/sh
export TXIPC_RUNTIME_DIR=/tmp/txipc-rt-companion
kv() { echo "== kv $1 lag $2 $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"; ./txipc-$1 --json bench kv --workload a,f --policy none,companion --rounds 3 --ops 100000 --follow-max-lag $2 > ab4-kv-$1-lag$2-$(date +%s).json 2>> ab4.err; }
kv hs 0; kv hs 1024; kv hs 0; kv hs 1024
echo "done $(date -u +%T)"
