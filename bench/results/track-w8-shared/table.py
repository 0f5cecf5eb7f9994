#!/usr/bin/env python3
"""Markdown rows: per run file, per fault: total p50/p99, after-detect p50/p99, detect p50, spare runs."""
import json, sys, math
def pct(v, q):
    v = sorted(v)
    if not v: return float('nan')
    return v[max(1, math.ceil(q * len(v))) - 1]
rows = {}
for f in sys.argv[1:]:
    d = json.load(open(f))
    name = f.split('/')[-1].replace('.json', '')
    for k in ['sigkill', 'segv', 'panic', 'hang']:
        ss = [s for s in d['samples'] if s['fault'] == k]
        tot = [s['recovery_us'] / 1e3 for s in ss]
        after = [(s['recovery_us'] - s['steps']['detect_us']) / 1e3 for s in ss if s['steps']]
        det = [s['steps']['detect_us'] / 1e3 for s in ss if s['steps']]
        st = (d.get(k) or {}).get('steps_p50') or {}
        if not ss: continue
        sp = sum(1 for s in ss if s.get('by_spare'))
        print(f"| {name} | {k} | {pct(tot,.5):.2f} / {pct(tot,.99):.2f} | {pct(after,.5):.2f} / {pct(after,.99):.2f} | {pct(det,.5):.2f} | {st.get('confirm_us',0):.0f}, {st.get('activate_us',0):.0f}, {st.get('client_us',0):.0f} | {sp}/{len(ss)} |")
