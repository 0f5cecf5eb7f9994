import json,sys
for n in sys.argv[1:]:
    try: d=json.load(open(f'/tmp/q8/{n}.json'))
    except Exception as e: print(n,'ERR',e); continue
    print(f"{n}: exactly_once={d.get('exactly_once')} errors={d.get('errors')} unplaced={d.get('unplaced')}")
    for k in ['sigkill','segv','panic','hang']:
        if k not in d or not isinstance(d[k],dict): continue
        r=d[k]; st=r.get('steps_p50',{})
        extra=''
        for key in ['by_spare','lag_p50','lag_records_p50','replayed_max']:
            if key in r: extra+=f" {key}={r[key]}"
        print(f"  {k:7} p50 {r['p50_us']/1000:6.2f} p99 {r['p99_us']/1000:6.2f} max {r.get('max_us',0)/1000:6.2f} ms  steps p50 "+' '.join(f"{a[:-3]}={b:.0f}" for a,b in st.items())+extra)
        ps=r.get('p99_sample_steps')
        if ps: print('          p99 sample: '+' '.join(f"{a[:-3]}={b:.0f}" for a,b in ps.items()))
