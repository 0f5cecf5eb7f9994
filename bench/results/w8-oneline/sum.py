import json,sys,glob,os
d=sys.argv[1]
for f in sorted(glob.glob(d+'/*.json'), key=lambda p:(os.path.basename(p).split('-')[1],p)):
    try: j=json.load(open(f))
    except Exception as e: print(f,'bad',e); continue
    c=j['detail']['cross_core']
    b=c['baselines']
    print("%-8s raw_spin %7.1f  chan %7.1f  null %7.1f (min %6.1f)  null/spin %5.2f  null/chan %5.2f  chan/spin %5.2f" % (
        os.path.basename(f), b['raw_spin_rtt_ns']['median_ns'], b['chan_rtt_ns']['median_ns'], c['txipc_rtt_ns']['median_ns'], c['txipc_rtt_ns']['min_ns'],
        c['ratios']['null_over_raw_spin']['median'], c['ratios']['null_over_chan']['median'], c['ratios']['chan_over_raw_spin']['median']))
