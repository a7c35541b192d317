#!/usr/bin/env python3
"""One hostile client per attack of issue 11, all at once, against a running broker on
loopback, for --seconds (every loop is bounded in time and in open sockets).

  hostile.py --addr 127.0.0.1:PORT --secret S --admin K --seconds 540

Attacks: refused logins that never close; a frame trickled a byte at a time; a fragmented
message never finished; a request head a byte per second (slowloris); /push heads with a
wrong key and a 2 MB Content-Length; a chat sender flooding an offline user (the user
logs in every 20 s with a reader that does not read, then drops); read reports of 101
ids. Prints one line per attack with what the broker answered.
"""
import argparse
import hashlib
import os
import socket
import struct
import threading
import time

md5 = lambda s: hashlib.md5(s.encode()).hexdigest()


def sign(uid, ts, secret, domain=None):
    parts = [md5(uid), md5(ts), md5(secret)] + ([md5(domain)] if domain else [])
    return md5("".join(parts))


def http(addr, raw, timeout=5.0):
    s = socket.create_connection(addr, timeout=timeout)
    try:
        s.sendall(raw)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out:
                head, _, body = out.partition(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        if len(body) >= int(line.split(b":")[1]):
                            return out
        return out
    finally:
        s.close()


def token(addr, uid, secret, domain=None):
    ts = str(int(time.time()))
    q = f"uid={uid}&timestamp={ts}&sign={sign(uid, ts, secret, domain)}"
    if domain:
        q += f"&domain={domain}"
    out = http(addr, f"GET /auth/websocket?{q} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
    return out.split(b'"token":"')[1].split(b'"')[0].decode()


def upgrade(addr, target, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(addr)
    s.sendall(
        f"GET {target} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed before 101")
        got += chunk
    return s


def frame(op, payload, fin=True):
    mask = os.urandom(4)
    b0 = (0x80 if fin else 0) | op
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return head + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


def closed(s):
    """Whether the broker has sent its close frame (0x88) or ended the connection."""
    s.setblocking(False)
    try:
        got = s.recv(65536)
        return not got or b"\x88\x02" in got
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        s.setblocking(True)


class Attack(threading.Thread):
    def __init__(self, name, fn, until):
        super().__init__(daemon=True)
        self.name, self.fn, self.until = name, fn, until
        self.count, self.notes = 0, {}

    def note(self, what):
        self.notes[what] = self.notes.get(what, 0) + 1

    def run(self):
        while time.time() < self.until:
            try:
                self.fn(self)
            except Exception as e:  # a refused or dropped connection is the point
                self.note(type(e).__name__)
            self.count += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--admin", required=True)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--chat-size", type=int, default=16384)
    ap.add_argument("--only", default="", help="comma-separated attack names (default: all)")
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    addr = (host, int(port))
    until = time.time() + min(a.seconds, 900)

    def bad_logins(t):
        # 20 refused logins held open (never answering the close), every second.
        socks = [upgrade(addr, "/?token=00000000000000000000000000000000") for _ in range(20)]
        time.sleep(1)
        for s in socks:
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
                t.note("dropped by the broker")
            except socket.timeout:
                t.note("still open after 6 s")
            s.close()

    def trickle(t):
        s = upgrade(addr, f"/?token={token(addr, 'trickler', a.secret)}")
        whole = frame(0x1, b'{"event":3,"data":{"msg_id":"' + b"0" * 200 + b'"}}')
        s.sendall(whole[:-100])
        for b in whole[-100:-50]:
            time.sleep(0.5)
            if closed(s):
                t.note("closed by the broker")
                return
            s.sendall(bytes([b]))
        t.note("not closed in 25 s")

    def fragments(t):
        s = upgrade(addr, f"/?token={token(addr, 'fragger', a.secret)}")
        s.sendall(frame(0x1, b'{"event":', fin=False))
        for _ in range(30):
            time.sleep(0.5)
            if closed(s):
                t.note("closed by the broker")
                return
            s.sendall(frame(0x9, b"p"))
        t.note("not closed in 15 s")

    def slowloris(t):
        s = socket.create_connection(addr, timeout=20)
        for b in b"GET /healthz HTTP/1.1\r\nHost: h\r\nX-Slow: " + b"a" * 100:
            try:
                s.sendall(bytes([b]))
            except OSError:
                t.note("closed by the broker")
                return
            time.sleep(1)
        t.note("not closed in 100 s")

    def big_push(t):
        out = http(addr, (
            "POST /push HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer wrong\r\n"
            "Content-Length: 2000000\r\n\r\n").encode())
        t.note(out.split(b"\r\n")[0].decode() if out else "no answer")
        time.sleep(0.01)

    def offline_flood(t):
        tok = token(addr, "flooder", a.secret, "hostile")
        s = upgrade(addr, f"/ws?id=flooder&name=f&domain=hostile&resource=r&token={tok}")
        s.setblocking(False)
        body = b'{"toId":"victim","type":10,"content":"' + b"x" * a.chat_size + b'"}'
        f = frame(0x1, body)
        t0 = time.time()
        while time.time() - t0 < 20 and time.time() < until:
            s.setblocking(True)
            s.sendall(f)
            s.setblocking(False)
            try:
                while s.recv(65536):
                    pass
            except BlockingIOError:
                pass
            time.sleep(1 / 200)
        s.close()
        # The victim logs in with a reader that never reads, then drops.
        vt = token(addr, "victim", a.secret, "hostile")
        v = upgrade(addr, f"/ws?id=victim&name=v&domain=hostile&resource=r&token={vt}", rcvbuf=4096)
        time.sleep(1)
        v.close()
        t.note("flood round")

    def read_reports(t):
        s = upgrade(addr, f"/?token={token(addr, 'reporter', a.secret)}")
        ids = ",".join(f'"{i:024x}"' for i in range(101))
        f = frame(0x1, ('{"event":3,"data":{"msg_ids":[' + ids + "]}}").encode())
        s.settimeout(5)
        for _ in range(200):
            s.sendall(f)
            time.sleep(1 / 200)
        got = b""
        try:
            while got.count(b"2003") < 100:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except socket.timeout:
            pass
        t.note(f"{got.count(b'2003')}/200 answered 2003 (others 2005: rate limit)")
        s.close()

    attacks = [Attack(n, f, until) for n, f in [
        ("refused logins", bad_logins), ("trickled frame", trickle),
        ("unfinished fragments", fragments), ("slowloris head", slowloris),
        ("unauthorized 2 MB /push", big_push), ("offline flood", offline_flood),
        ("101-id read reports", read_reports)]]
    if a.only:
        attacks = [t for t in attacks if t.name in a.only.split(",")]
    for t in attacks:
        t.start()
    for t in attacks:
        t.join(timeout=max(0, until - time.time()) + 120)
    for t in attacks:
        print(f"hostile: {t.name}: {t.count} rounds; {t.notes}", flush=True)


if __name__ == "__main__":
    main()
