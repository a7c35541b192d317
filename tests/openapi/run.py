"""Starts a broker on a temporary data directory, gets a user token the way a client does
(a signed GET /auth/websocket), and runs schemathesis with docs/openapi.yaml against it:
a positive run and a negative run. Exits non-zero on any failure, and always
stops the broker (SIGTERM, as an operator would). Called by tests/openapi/run.sh."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

SECRET = "openapi-secret"
ADMIN = "openapi-admin-key"
HERE = os.path.dirname(os.path.abspath(__file__))


def md5(text):
    return hashlib.md5(text.encode()).hexdigest()


def sign(uid, ts):
    """docs/protocol.md section 1, the default domain."""
    return md5(md5(uid) + md5(ts) + md5(SECRET))


def start(binary, data, secrets=True):
    """A broker on `data`; without `secrets`, with the development ones of
    tuning/default.toml (where GET /console/dev-token exists)."""
    config = os.path.join(data, "shardcast.toml")
    with open(config, "w") as f:
        f.write(
            'listen = "127.0.0.1:0"\n'
            f"data_dir = {json.dumps(os.path.join(data, 'data'))}\n"
            "shards = 2\n"
            'log_level = "warn"\n'
        )
        if secrets:
            f.write(f'secret = "{SECRET}"\nadmin_key = "{ADMIN}"\n')
    broker = subprocess.Popen([binary, "--config", config], stdout=subprocess.PIPE, text=True)
    # The first line names the address ("shardcast listening on 127.0.0.1:PORT").
    line = broker.stdout.readline()
    found = re.search(r"(127\.0\.0\.1:\d+)", line)
    if not found:
        broker.kill()
        sys.exit(f"the broker's first line names no address: {line!r}")
    return broker, "http://" + found.group(1)


def token(base, uid):
    ts = str(int(time.time()))
    url = f"{base}/auth/websocket?uid={uid}&timestamp={ts}&sign={sign(uid, ts)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["code"] == 0, body
    return body["content"]["token"]


def stop(broker, failed):
    if broker.poll() is None:
        broker.send_signal(signal.SIGTERM)
        try:
            broker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            broker.kill()
            failed.append("the broker did not stop on SIGTERM")


def spot_checks(venv_python, base, dev_base, failed):
    """Answers that generated data cannot reach (a valid sign, a user's own history, the
    development helper), validated against the spec by schemathesis's own validator."""
    ts = str(int(time.time()))
    stale = str(int(time.time()) - 3600)
    user = "openapi-user"
    tok = token(base, user)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    message = {"toId": user, "type": 10, "content": "hi", "fromId": "openapi-peer"}
    calls = [
        # (operation, URL, headers, JSON body, expected status); the message gives the
        # history below an item to check.
        (("/message", "POST"), f"{base}/message", admin, message, 200),
        (("/auth/websocket", "GET"), f"{base}/auth/websocket?uid={user}&timestamp={ts}&sign={sign(user, ts)}", {}, None, 200),
        (("/auth/websocket", "GET"), f"{base}/auth/websocket?uid={user}&timestamp={stale}&sign={sign(user, stale)}", {}, None, 401),
        (("/message-log", "GET"), f"{base}/message-log?domain=default&toId={user}&token={tok}", {}, None, 200),
        (("/message-log", "GET"), f"{base}/message-log?domain=default&toId={user}", {"Authorization": f"Bearer {tok}"}, None, 200),
        (("/message-log", "GET"), f"{base}/message-log?domain=default&toId=someone-else&token={tok}", {}, None, 403),
        (("/message-log", "GET"), f"{base}/message-log?domain=default&toId={user}&token={'0' * 32}", {}, None, 401),
        (("/console/dev-token", "GET"), f"{dev_base}/console/dev-token?uid={user}", {}, None, 200),
        (("/console/dev-token", "GET"), f"{base}/console/dev-token?uid={user}", {}, None, 404),
    ]
    script = (
        "import json, sys, requests, schemathesis\n"
        "schema = schemathesis.openapi.from_path(sys.argv[1])\n"
        "bad = 0\n"
        "for (path, method), url, headers, body, want in json.loads(sys.argv[2]):\n"
        "    r = requests.request(method, url, headers=headers, json=body, timeout=10)\n"
        "    try:\n"
        "        assert r.status_code == want, f'status {r.status_code}, expected {want}: {r.text}'\n"
        "        schema[path][method].validate_response(r)\n"
        "        print(f'ok   {method} {path} -> {r.status_code}')\n"
        "    except Exception as e:\n"
        "        bad += 1\n"
        "        print(f'FAIL {method} {url}: {e}')\n"
        "sys.exit(1 if bad else 0)\n"
    )
    spec = os.path.join(HERE, "..", "..", "docs", "openapi.yaml")
    print("== spot checks of answers generated data cannot reach", flush=True)
    if subprocess.run([venv_python, "-c", script, spec, json.dumps(calls)]).returncode != 0:
        failed.append("spot checks")


def main():
    binary, st, examples = sys.argv[1], sys.argv[2], sys.argv[3]
    failed = []
    with tempfile.TemporaryDirectory(prefix="shardcast-openapi-") as data:
        os.mkdir(os.path.join(data, "dev"))
        broker, base = start(binary, data)
        dev = None
        try:
            dev, dev_base = start(binary, os.path.join(data, "dev"), secrets=False)
            spot_checks(os.path.join(os.path.dirname(st), "python"), base, dev_base, failed)
            env = dict(
                os.environ,
                SHARDCAST_ADMIN=ADMIN,
                SHARDCAST_TOKEN=token(base, "openapi-user"),
            )
            for mode in ("positive", "negative"):
                print(f"== schemathesis, {mode} data, against {base}", flush=True)
                cmd = [
                    st,
                    "--no-color",
                    "--config-file",
                    os.path.join(HERE, "schemathesis.toml"),
                    "run",
                    # The file, not the broker's copy (tests/openapi.rs proves them equal):
                    # loaded from a URL, schemathesis leaves that URL's operation out.
                    os.path.join(HERE, "..", "..", "docs", "openapi.yaml"),
                    "--url",
                    base,
                    "--mode",
                    mode,
                    "--checks",
                    "all",
                    # A missing admin key is 403/1005 by docs/protocol.md section 2 (the contract
                    # backends already handle); this check hard-codes 401 for a missing
                    # Authorization header, the only header the spec requires.
                    "--exclude-checks",
                    "missing_required_header",
                    "--max-examples",
                    examples,
                    "--seed",
                    os.environ.get("SHARDCAST_OPENAPI_SEED", "24"),
                    # One worker: hypothesis's lambda descriptions are not thread-safe on
                    # Python 3.11 ("AST constructor recursion depth mismatch").
                    "--workers",
                    "1",
                    "--request-timeout",
                    "10",
                    "--generation-database",
                    "none",
                ]
                if subprocess.run(cmd, env=env).returncode != 0:
                    failed.append(mode)
            if broker.poll() is not None:
                failed.append(f"the broker exited with {broker.returncode}")
        finally:
            stop(broker, failed)
            if dev is not None:
                stop(dev, failed)
    if failed:
        sys.exit("schemathesis: failed: " + ", ".join(failed))
    print("schemathesis: spot checks, positive and negative runs passed")


if __name__ == "__main__":
    main()
