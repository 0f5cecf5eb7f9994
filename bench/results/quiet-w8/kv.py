import json,sys
for n in sys.argv[1:]:
    d=json.load(open(f'/tmp/q8/{n}.json'))
    print(n, 'follow_max_lag', d['config'].get('follow_max_lag'))
    for r in d['results']:
        c=r.get('companion_cpu')
        cs=''
        if c: cs=' cpu '+' '.join(f"{k}={v:.2f}" if isinstance(v,float) else f"{k}={v}" for k,v in c.items())
        print(f"  {r['workload']} {r['policy']:10} vs {r['baseline']:10} {r['ops_per_sec']:9.0f} ops/s loss {r['loss_vs_none_pct']:+6.1f}% (unstalled {r['loss_unstalled_pct']:+6.1f}%) rounds {[round(x,1) for x in r['loss_vs_none_pct_rounds']]} ckpt {r.get('checkpoints')} srvck {r.get('server_checkpoints')}{cs}")
