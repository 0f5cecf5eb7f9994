import json,glob,sys
rows=[]
for f in sorted(glob.glob(sys.argv[1] + '/ab_*.json')):
    try:
        v=json.load(open(f))
    except Exception: continue
    c=v["detail"]["cross_core"]
    g=lambda k: v.get(k)
    rows.append((f.split('/')[-1], g('raw_spin_rtt_ns'), g('raw_spin_reply_1000_rtt_ns'), g('chan_rtt_ns'), g('txipc_rtt_ns'), g('kv_get_1000_rtt_ns'), g('kv_get_owned_1000_rtt_ns'), g('echo_1000_rtt_ns'), c['ratios']['kv_get_over_null']['median'], c['ratios'].get('kv_get_owned_over_null',{}).get('median'), c['ratios']['null_over_raw_spin']['median']))
fmt=lambda x: '-' if x is None else (f'{x:.0f}' if x>10 else f'{x:.2f}')
print('run | raw spin | raw spin 1000B reply | chan | null | kv get | owned get | echo | get/null | owned/null | null/spin')
for r in rows: print(' | '.join([r[0]]+[fmt(x) for x in r[1:]]))
