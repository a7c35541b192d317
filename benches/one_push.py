#!/usr/bin/env python3
"""What one large fan-out push costs (issue 23, item 5): starts BIN (2 shards, defaults,
max_body_bytes 8 MiB) on a fresh data directory, sends one POST /push to UIDS uids with
SIZE bytes of content, and prints the answer time, the broker's peak RSS (VmHWM) and what
the data directory and its journals take on disk. Loopback only; one request.

Usage: benches/one_push.py BIN [UIDS=10000] [SIZE=65536]"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

ADMIN = "one-push-admin-key"


def main():
    binp = sys.argv[1]
    uids = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 65536
    d = tempfile.mkdtemp()
    cfg = os.path.join(d, "c.toml")
    with open(cfg, "w") as f:
        f.write(f'listen = "127.0.0.1:0"\ndata_dir = "{d}/data"\nshards = 2\n'
                f'secret = "one-push"\nadmin_key = "{ADMIN}"\nlog_level = "warn"\n'
                'max_body_bytes = 8388608\n')
    p = subprocess.Popen([binp, "--config", cfg], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    try:
        addr = None
        deadline = time.time() + 30
        for line in p.stdout:
            m = re.search(r"listening on (\S+)", line)
            if m:
                addr = m.group(1)
                break
            if time.time() > deadline:
                break
        if addr is None:
            sys.exit("the broker did not start")

        def hwm():
            s = open(f"/proc/{p.pid}/status").read()
            return int(re.search(r"VmHWM:\s+(\d+)", s).group(1)) // 1024

        def du(path):
            return int(subprocess.check_output(["du", "-sk", path]).split()[0]) // 1024

        before = hwm()
        body = json.dumps({"uids": [f"u{i}" for i in range(uids)], "title": "t",
                           "content": "x" * size}).encode()
        req = urllib.request.Request(
            f"http://{addr}/push", data=body, method="POST",
            headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
        t = time.time()
        answer = json.loads(urllib.request.urlopen(req, timeout=600).read())
        took = time.time() - t
        journals = sum(os.path.getsize(os.path.join(dp, f))
                       for dp, _, fs in os.walk(f"{d}/data") for f in fs
                       if f.startswith("journal.")) >> 20
        print(f"{uids} uids, {size} B content ({len(body) >> 10} KiB request): code "
              f"{answer.get('code')}, answered in {took:.2f} s; peak RSS {before} -> {hwm()} "
              f"MiB; data directory {du(d + '/data')} MiB, journals {journals} MiB")
    finally:
        p.terminate()
        p.wait()
        subprocess.run(["rm", "-rf", d])


if __name__ == "__main__":
    main()
