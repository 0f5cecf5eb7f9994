import json,sys,re,bisect
d=json.load(open(sys.argv[1]))
ev=[]
for line in open(sys.argv[2]):
    m=re.match(r'\s*(\S.*?)\s+(\d+)\s+\[(\d+)\]\s+(\d+\.\d+):\s+(\S+):\s*(.*)',line)
    if not m: continue
    comm,pid,cpu,t,name,rest=m.groups()
    ev.append((int(round(float(t)*1e9)),int(cpu),comm,int(pid),name.replace('sched:',''),rest))
ev.sort()
ts=[e[0] for e in ev]
n=int(sys.argv[3]) if len(sys.argv)>3 else 3
kinds=sys.argv[4].split(',') if len(sys.argv)>4 else ['sigkill','segv']
def short(name,rest):
    if name=='sched_switch':
        m=re.search(r'prev_comm=(.*?) prev_pid=(\d+) prev_prio=(\d+) prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+) next_prio=(\d+)',rest)
        if m: return 'switch %s/%s(p%s,%s) -> %s/%s(p%s)'%(m.group(1),m.group(2),m.group(3),m.group(4),m.group(5),m.group(6),m.group(7))
    if name in('sched_wakeup','sched_waking'):
        m=re.search(r'comm=(.*?) pid=(\d+) prio=(\d+) target_cpu=(\d+)',rest)
        if m: return '%s %s/%s(p%s) on cpu%s'%(name[6:],m.group(1),m.group(2),m.group(3),m.group(4))
    return name+' '+rest[:80]
for k in kinds:
    ss=sorted([s for s in d['samples'] if s['fault']==k and s['at_ns']['seen']], key=lambda s:-s['recovery_us'])
    for s in ss[:n]+ss[len(ss)//2:len(ss)//2+1]:
        a=s['at_ns']; f=a['fault']
        print('=== %s %.0f us  seen %.0f act %.0f serving %.0f reply %.0f exit %s steps %s'%(k,s['recovery_us'],(a['seen']-f)/1e3,(a['activated']-f)/1e3,(a['serving']-f)/1e3,(a['reply']-f)/1e3,s.get('old_exit_us'),s.get('steps')))
        i=bisect.bisect_left(ts,f-20000); j=bisect.bisect_right(ts,a['reply']+20000)
        for e in ev[i:j]:
            if e[4]=='sched_waking': continue
            print('  %8.1f cpu%d %-16s %s'%((e[0]-f)/1e3,e[1],e[2][:16],short(e[4],e[5])))
