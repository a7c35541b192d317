#!/usr/bin/env bash
# shardcast beside Nchan, measured by the same load generator in the same run,
# alternating, on loopback. Prints every result line and a table at the end.
# Usage: benches/compare.sh [ROUNDS]   (default 1; figures in README.md come from this)
# Every round runs issue 12's set: workload W (10,000 subscribers, 16 publishers, 200,000
# pushes closed loop in every durability mode on 2 shards and 1, then 100,000 at
# 10,000/s), its 64-publisher variant, idle memory at 5k and 15k connections, the storm
# and chat; the table gives medians with their range over the rounds. ONLY=w runs that
# set alone, without README's earlier 1,000-subscriber workload.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-1}

if [ ! -e /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-nchan >/dev/null
fi
cargo build --release --bins -q
bench=target/release/shardcast-bench

prefix=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed -e "s|@PREFIX@|$prefix|g" -e "s|@PORT@|$port|g" benches/nchan.conf.in > "$prefix/nginx.conf"
mkdir -p "$prefix/body"
nginx -p "$prefix" -c "$prefix/nginx.conf" &
nginx_pid=$!
trap 'kill $nginx_pid 2>/dev/null; wait $nginx_pid 2>/dev/null; rm -rf "$prefix"' EXIT
for _ in $(seq 100); do
  workers=$(pgrep -P "$nginx_pid" | paste -sd, || true)
  [ -n "$workers" ] && [ "$(echo "$workers" | tr ',' '\n' | wc -l)" -ge 2 ] && break
  sleep 0.1
done
nchan=(--target nchan --addr "127.0.0.1:$port" --pid "$nginx_pid,$workers")
results=$(mktemp)

run() { echo "+ $*" >&2; "$bench" "$@" | tee -a /dev/stderr | grep '^{' >> "$results"; }
# A row of issue 12's set, tagged with what the generator's JSON does not say.
runw() {
  label=$1; shift
  echo "+ $*" >&2
  "$bench" "$@" | tee -a /dev/stderr | grep '^{' |
    python3 -c 'import json,sys; r=json.load(sys.stdin); r["label"]=sys.argv[1]; print(json.dumps(r)); print(r.get("msgs_per_s", 0), file=sys.stderr)' "$label" 2>"$results.last" >> "$results"
}
w=(push --conns 10000 --publishers 16)
w64=(push --conns 10000 --publishers 64)

for _ in $(seq "$rounds"); do
  # W, closed loop: every durability mode, 2 shards and 1.
  for shards in 2 1; do
    for mode in group sync async; do
      runw "W $mode" "${w[@]}" --messages 200000 --shards "$shards" --durability "$mode"
    done
  done
  runw "W" "${w[@]}" --messages 200000 "${nchan[@]}"
  # The 64-publisher variant.
  for mode in group async; do
    runw "W64 $mode" "${w64[@]}" --messages 200000 --shards 2 --durability "$mode"
  done
  runw "W64" "${w64[@]}" --messages 200000 "${nchan[@]}"
  # W, open loop at 10,000/s.
  for mode in group async; do
    runw "W $mode" "${w[@]}" --messages 100000 --rate 10000 --shards 2 --durability "$mode"
  done
  runw "W" "${w[@]}" --messages 100000 --rate 10000 "${nchan[@]}"
  # Idle memory: the slope from 5,000 to 15,000 connections, a fresh server each.
  for conns in 5000 15000; do
    runw "idle $conns" idle --conns "$conns" --shards 2
    runw "idle $conns" idle --conns "$conns" "${nchan[@]}"
  done
  # Storm: token fetch + upgrade + unread list (Nchan: upgrade).
  for shards in 2 1; do
    runw "storm" storm --seconds 5 --workers 4 --shards "$shards"
  done
  runw "storm" storm --seconds 5 --workers 4 "${nchan[@]}"
  # Chat, history persisted: closed loop (one message per sender waiting for its ack),
  # then open loop at half that round's closed-loop rate.
  for shards in 2 1; do
    runw "chat" chat --pairs 100 --messages 40000 --shards "$shards"
    max=$(cut -d. -f1 "$results.last")
    runw "chat at half the closed loop's rate" chat --pairs 100 --messages 40000 --rate $((max / 2)) --shards "$shards"
  done
  [ "${ONLY:-}" = w ] && continue
  # README's earlier workload: 1,000 subscribers, 64 publishers.
  for shards in 1 2; do
    run push --conns 1000 --publishers 64 --messages 40000 --shards "$shards"
  done
  run push --conns 1000 --publishers 64 --messages 40000 "${nchan[@]}"
  for shards in 1 2; do
    run push --conns 1000 --publishers 64 --messages 50000 --rate 10000 --shards "$shards"
  done
  run push --conns 1000 --publishers 64 --messages 50000 --rate 10000 "${nchan[@]}"
done
rm -f "$results.last"

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def who(r): return f'{r["target"]}' + (f' ({r["shards"]} shard{"s" if r["shards"] > 1 else ""})' if r["target"] == "shardcast" else "")
def med(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]
def spread(rs, k):
    xs = [r[k] for r in rs]
    return f"{med(xs)} ({min(xs)}–{max(xs)})" if len(xs) > 1 else f"{xs[0]}"
groups = {}
for r in rows:
    if r.get("label"):
        # The half-rate chat runs differ in rate by round; they are one row.
        mode = "open loop" if r["label"].startswith("chat at half") else r.get("mode", "")
        groups.setdefault((r["label"], who(r), mode), []).append(r)
if groups:
    print("\n| issue 12 | server | rate, median (range) | CPU µs each | p99 ms | lost / dup | rounds |\n|---|---|---|---|---|---|---|")
    for (label, server, mode), rs in groups.items():
        s = rs[0]["scenario"]
        if s == "idle":
            continue
        if s == "storm":
            rate, cpu, loss = spread(rs, "per_s") + " handshakes/s", spread(rs, "server_cpu_us_per_handshake"), "–"
        else:
            rate, cpu = spread(rs, "msgs_per_s") + " msg/s", spread(rs, "server_cpu_us_per_msg")
            loss = f"{sum(r['lost'] for r in rs)} / {sum(r.get('duplicated', 0) for r in rs)}"
        name = f"{label}, {mode}" if mode else label
        print(f"| {name} | {server} | {rate} | {cpu} | {spread(rs, 'p99_ms')} | {loss} | {len(rs)} |")
    # Idle: marginal RSS per connection, 5,000 → 15,000, per round (runs pair up in order):
    # the slope of what the connections added (RSS after them − before them; shardcast's
    # tokens are fetched before "before"), and the older slope of "after" alone, which
    # also counts the store's growth with 10,000 more users' tokens.
    for server in sorted({who(r) for r in rows if r["scenario"] == "idle" and r.get("label")}):
        lo = [r for r in rows if r.get("label") == "idle 5000" and who(r) == server]
        hi = [r for r in rows if r.get("label") == "idle 15000" and who(r) == server]
        added = lambda r: r["rss_after_kib"] - r["rss_before_kib"]
        slopes = [round((added(h) - added(l)) * 1024 / 10000) for l, h in zip(lo, hi)]
        after = [round((h["rss_after_kib"] - l["rss_after_kib"]) * 1024 / 10000) for l, h in zip(lo, hi)]
        if slopes:
            print(f"| idle, marginal RSS per connection 5k → 15k | {server} | {med(slopes)} B ({min(slopes)}–{max(slopes)}); after-only slope {med(after)} B | | | | {len(slopes)} |")
rows = [r for r in rows if not r.get("label")]
if rows:
    print("\n| scenario | server | result |\n|---|---|---|")
for r in rows:
    res = (f'{r["msgs_per_s"]} msg/s, p50 {r["p50_ms"]} ms, p99 {r["p99_ms"]} ms, p999 {r["p999_ms"]} ms, '
           f'lost {r["lost"]}, dup {r["duplicated"]}, {r["server_cpu_us_per_msg"]} µs CPU/msg')
    print(f'| push, {r["mode"]} | {who(r)} | {res} |')
PY
