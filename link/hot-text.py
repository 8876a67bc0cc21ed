#!/usr/bin/env python3
"""Writes link/hot-text.txt: every function of the release binary that ran under callgrind.

  hot-text.py LINK_MAP OUT CALLGRIND_OUT...

CALLGRIND_OUT (one or more runs; the union is written): `valgrind --tool=callgrind --dump-instr=yes --compress-pos=no` on the stripped
release binary (instruction addresses, as linked). LINK_MAP: lld's -Map of that same binary
(`ALERT_RELAY_LINK_MAP=... cargo build --release`), which names the function (section
`.text.<symbol>`) at each address. The functions are written in their current link order, so
callers and callees the compiler emitted together stay together. The header of OUT is kept.
"""
import bisect
import re
import sys

link_map, out, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
addrs = set()
for cg in runs:
    ob, names = None, {}
    for line in open(cg):
        if line.startswith(("ob=", "cob=")):
            # `ob=(N) path` the first time (in an ob= or cob= line), `ob=(N)` after: callgrind's
            # name compression. Costs that follow belong to the current ob=.
            m = re.match(r"c?ob=(\(\d+\))?\s*(.*)$", line.strip())
            if m.group(1) and m.group(2):
                names[m.group(1)] = m.group(2)
            if line.startswith("ob="):
                ob = m.group(2) or names.get(m.group(1), "")
        elif ob and ob.endswith("/alert-relay") and line.startswith("0x"):
            addrs.add(int(line.split()[0], 16))
secs = []
for line in open(link_map):
    m = re.match(r"^\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+\s+\S.*:\(\.text\.(\S+)\)$", line)
    if m:
        # LLVM's prefixes (`.text.unlikely.<symbol>` for #[cold] code): lld orders by symbol.
        name = re.sub(r"^(unlikely|hot|startup|exit|split)\.", "", m.group(3))
        secs.append((int(m.group(1), 16), int(m.group(2), 16), name))
secs.sort()
starts = [s[0] for s in secs]
hot = {}
for a in addrs:
    i = bisect.bisect_right(starts, a) - 1
    if i >= 0 and a < secs[i][0] + secs[i][1]:
        hot.setdefault(secs[i][2], secs[i][0])
size = sum(s[1] for s in secs if s[2] in hot)
print(f"{len(hot)} of {len(secs)} functions ran: {size} of {sum(s[1] for s in secs)} bytes")
try:
    header = [l for l in open(out) if l.startswith("#")]
except FileNotFoundError:
    header = []
with open(out, "w") as f:
    f.writelines(header)
    for name, _ in sorted(hot.items(), key=lambda kv: kv[1]):
        f.write(name + "\n")
