import json,sys
for n in sys.argv[1:]:
    try: d=json.load(open(f'/tmp/q8/{n}.json'))
    except Exception as e: print(n,'ERR',e); continue
    c=d['detail']['cross_core']; b=c['baselines']; p=c['payload']; r=c['ratios']
    g=lambda x: x['median_ns'] if x else float('nan')
    print(f"{n:16} raw {g(b['raw_spin_rtt_ns']):6.1f} chan {g(b['chan_rtt_ns']):6.1f} null {g(c['txipc_rtt_ns']):6.1f} get {g(p['kv_get_rtt_ns']):6.1f} rawrep {g(p['raw_spin_reply_rtt_ns']):6.1f} chanrep {g(p.get('chan_reply_rtt_ns')) if p.get('chan_reply_rtt_ns') else 0:6.1f} | null/raw {r['null_over_raw_spin']['median']:.2f} chan/raw {r['chan_over_raw_spin']['median']:.2f} null/chan {r['null_over_chan']['median']:.2f} get/null {r['kv_get_over_null']['median']:.2f} peers {d.get('iceoryx2_rtt_ns','')} {d.get('ipc_channel_rtt_ns','')}")
