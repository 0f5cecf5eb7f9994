#!/usr/bin/env python3
"""Summarise bench recovery JSON reports: per fault kind p50/p99 of the total, of the time
after detection (first sight -> reply), the runs the spare recovered, and the p50 steps."""
import json, sys
def pct(v, q):
    v = sorted(v)
    if not v: return float('nan')
    import math
    r = max(1, math.ceil(q * len(v)))
    return v[r - 1]
for f in sys.argv[1:]:
    d = json.load(open(f))
    print(f)
    for k in ['sigkill', 'segv', 'panic', 'hang']:
        ss = [s for s in d['samples'] if s['fault'] == k]
        tot = [s['recovery_us'] for s in ss]
        after = [s['recovery_us'] - s['steps']['detect_us'] for s in ss if s['steps']]
        det = [s['steps']['detect_us'] for s in ss if s['steps']]
        sp = sum(1 for s in ss if s.get('by_spare'))
        st = d[k]['steps_p50'] or {}
        p99s = d[k]['p99_sample_steps'] or {}
        print(f"  {k:7s} n={len(ss):2d} spare={sp:2d} total p50/p99 {pct(tot,.5)/1e3:6.2f}/{pct(tot,.99)/1e3:6.2f} ms"
              f"  after-detect p50/p99 {pct(after,.5)/1e3:5.2f}/{pct(after,.99)/1e3:5.2f} ms  detect p50 {pct(det,.5)/1e3:5.2f}"
              f"  steps50 c/a/cl {st.get('confirm_us',0):.0f}/{st.get('activate_us',0):.0f}/{st.get('client_us',0):.0f} us"
              f"  p99 sample d/c/a/cl {p99s.get('detect_us',0):.0f}/{p99s.get('confirm_us',0):.0f}/{p99s.get('activate_us',0):.0f}/{p99s.get('client_us',0):.0f}")
