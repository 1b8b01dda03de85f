#!/usr/bin/env python3
"""The load probe of scripts/demo.sh: GETs URL at RATE requests a second (an
open model: a slow answer does not slow the next request down), each on a fresh
connection, until STOP_FILE exists; then writes a JSON summary to OUT:
requests sent and failed, and each version (X-Demo-Version) with the wall-clock
time it was first seen.

    demo-probe.py URL RATE STOP_FILE OUT
"""
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor


def main():
    url, rate, stop_file, out = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
    target = urllib.parse.urlsplit(url)
    lock = threading.Lock()
    sent = failed = 0
    first_seen = {}
    order = []
    errors = []

    def one():
        nonlocal failed
        try:
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=5)
            conn.request("GET", target.path or "/", headers={"Connection": "close"})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            ok = 200 <= resp.status < 300
            version = resp.getheader("X-Demo-Version")
            error = None if ok else f"HTTP {resp.status}"
        except Exception as e:  # every failure counts, whatever it is
            ok, version, error = False, None, f"{type(e).__name__}: {e}"
        with lock:
            if not ok:
                failed += 1
                if len(errors) < 5:
                    errors.append(error)
            if version and version not in first_seen:
                first_seen[version] = time.time()
                order.append(version)

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=64) as pool:
        while not os.path.exists(stop_file):
            due = start + sent / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            pool.submit(one)
            sent += 1
    summary = {
        "sent": sent,
        "failed": failed,
        "versions": order,
        "first_seen": first_seen,
        "errors": errors,
        "seconds": round(time.monotonic() - start, 2),
    }
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f)
    os.rename(tmp, out)


if __name__ == "__main__":
    main()
