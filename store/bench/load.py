#!/usr/bin/env python3
"""Loads N needles of SIZE random bytes into volume VOL of a running store through batch PUTs
and writes the GET paths (one per line) for wrk's get_random.lua.

usage: load.py BASE_URL VOL N SIZE PATHS_OUT [PREFIX]
PREFIX (default /v1/needles) lets the same list drive the memory-ceiling route."""
import os
import struct
import sys
import urllib.request

base, vol, n, size, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
prefix = sys.argv[6] if len(sys.argv) > 6 else "/v1/needles"
cookie = 0x5EED
batch = max(1, (4 << 20) // (size + 64))
key = 1
with open(out, "w") as paths:
    while key <= n:
        body = bytearray()
        for k in range(key, min(n + 1, key + batch)):
            data = os.urandom(size)
            body += struct.pack("<QIQB", k, 0, cookie, 24) + b"application/octet-stream"
            body += struct.pack("<I", len(data)) + data
            paths.write(f"{prefix}/{vol}/{k}/0/{cookie:x}\n")
        req = urllib.request.Request(f"{base}/v1/volumes/{vol}/batch", data=bytes(body), method="POST")
        with urllib.request.urlopen(req) as r:
            assert r.status == 201, r.status
        key += batch
print(f"loaded {n} x {size} B needles into volume {vol}", file=sys.stderr)
