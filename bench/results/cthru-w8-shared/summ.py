import json,sys
for f in sys.argv[1:]:
    d=json.load(open(f))
    out=[]
    for r in d['results']:
        p=r['policy']
        if p in ('none-plain','companion','none'):
            s=f"{r['workload']} {p} {r['ops_per_sec']/1000:.1f}k (unst {r['ops_per_sec_unstalled']/1000:.1f}k)"
            if p=='companion':
                s+=f" loss {r['loss_vs_none_pct']:.1f}% rounds {[round(x,1) for x in r['loss_vs_none_pct_rounds']]} unst-loss {r['loss_unstalled_pct']:.1f}%"
            out.append(s)
    print(f); print('   '+'\n   '.join(out))
