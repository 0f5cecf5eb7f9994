#!/bin/bash
# usage: sum.sh perf.data : the null server's samples per runtime/channel function
perf report -i $1 --sort comm,sym -n 2>/dev/null | grep -v '^#' | grep '^ .*null@ipc-profil' | \
 awk '{s=$2; $1=$2=$3=""; sub(/^ +\[.\] /,""); print s"\t"$0}' | \
 grep -E "Loop::(run_roots|serve_batch|begin|run)$|Tx::commit|take_into|publish$|wait_with|set_reply_fields|tx_cell" 
