import sys,re
cur=None
for line in open(sys.argv[1]):
    m=re.match(r'== (\S+) run (\d+) (\S+) load (\S+)',line)
    if m: cur=[m.group(3),m.group(2),m.group(4)]; continue
    m=re.match(r'raw spin\s+median\s+(\S+) ns\s+fastest batch\s+(\S+)',line)
    if m: cur+= [m.group(1),m.group(2)]; continue
    m=re.match(r'channel\s+median\s+(\S+) ns\s+fastest batch\s+(\S+)',line)
    if m:
        cur+=[m.group(1),m.group(2)]
        print("%-12s run %s load %-5s raw spin %6s (fastest %5s)  channel %6s (fastest %6s)  chan/spin %.2f"%(cur[0],cur[1],cur[2],cur[3],cur[4],cur[5],cur[6],float(cur[5])/float(cur[3])))
