import json,sys,math,glob
def pct(v,q):
    v=sorted(v); return v[min(len(v)-1,math.ceil(q*len(v))-1)] if v else float('nan')
def stats(f,k):
    d=json.load(open(f)); ss=[s for s in d['samples'] if s['fault']==k]
    tot=[s['recovery_us']/1e3 for s in ss]
    post=[(s['steps']['confirm_us']+s['steps']['activate_us']+s['steps']['client_us'])/1e3 for s in ss if s.get('steps')]
    det=[s['steps']['detect_us']/1e3 for s in ss if s.get('steps')]
    return pct(tot,.5),pct(tot,.99),pct(post,.5),pct(post,.99),pct(det,.5)
def rng(vals):
    lo,hi=min(vals),max(vals)
    return '%.2f'%lo if abs(hi-lo)<0.005 else '%.2f–%.2f'%(lo,hi)
tag,heap=sys.argv[1],sys.argv[2]
for k in ['sigkill','segv','panic','hang']:
    row=[]
    for t in ['on','off']:
        fs=sorted(glob.glob('%s_%s_%s_*.json'%(tag,heap,t)))
        fs=[f for f in fs if __import__("os").path.getsize(f)>0]
        if not fs: row.append('—'); row.append('—'); continue
        st=[stats(f,k) for f in fs]
        row.append('%s / %s'%(rng([s[0] for s in st]),rng([s[1] for s in st])))
        row.append('%s / %s (detect %s)'%(rng([s[2] for s in st]),rng([s[3] for s in st]),rng([s[4] for s in st])))
    print('| %s | %s | %s | %s | %s | %s |'%(heap,k,row[0],row[1],row[2],row[3]))
