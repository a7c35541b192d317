#!/usr/bin/env bash
# shardcast beside Nchan, measured by the same load generator in the same run,
# alternating, on loopback. Prints every result line and a table at the end.
# Usage: benches/compare.sh [ROUNDS]   (default 1; figures in README.md come from this)
# ONLY=w runs workload W alone (issue 12: 2 shards and 1, `group` and `async`, 10,000
# subscribers, 16 publishers, 200,000 pushes closed loop, then 100,000 at 10,000/s) and
# prints medians with their range over the rounds.
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
# A W row, tagged with what the generator's JSON does not say (the durability mode).
runw() {
  label=$1; shift
  echo "+ $*" >&2
  "$bench" "$@" | tee -a /dev/stderr | grep '^{' |
    python3 -c 'import json,sys; r=json.load(sys.stdin); r["label"]=sys.argv[1]; print(json.dumps(r))' "$label" >> "$results"
}
w=(push --conns 10000 --publishers 16)

for _ in $(seq "$rounds"); do
  for shards in 2 1; do
    for mode in group async; do
      runw "W $mode" "${w[@]}" --messages 200000 --shards "$shards" --durability "$mode"
    done
  done
  runw "W" "${w[@]}" --messages 200000 "${nchan[@]}"
  for mode in group async; do
    runw "W $mode" "${w[@]}" --messages 100000 --rate 10000 --shards 2 --durability "$mode"
  done
  runw "W" "${w[@]}" --messages 100000 --rate 10000 "${nchan[@]}"
  [ "${ONLY:-}" = w ] && continue
  for shards in 1 2; do
    run idle --conns 10000 --shards "$shards"
  done
  run idle --conns 10000 "${nchan[@]}"
  for shards in 1 2; do
    run push --conns 1000 --publishers 64 --messages 40000 --shards "$shards"
  done
  run push --conns 1000 --publishers 64 --messages 40000 "${nchan[@]}"
  for shards in 1 2; do
    run push --conns 1000 --publishers 64 --messages 50000 --rate 10000 --shards "$shards"
  done
  run push --conns 1000 --publishers 64 --messages 50000 --rate 10000 "${nchan[@]}"
  for shards in 1 2; do
    run storm --seconds 5 --workers 4 --shards "$shards"
  done
  run storm --seconds 5 --workers 4 "${nchan[@]}"
  for shards in 1 2; do
    max=$("$bench" chat --pairs 100 --messages 40000 --shards "$shards" | tee -a /dev/stderr | grep '^{' | tee -a "$results" | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["msgs_per_s"]))')
    run chat --pairs 100 --messages 40000 --rate $((max / 2)) --shards "$shards"
  done
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def who(r): return f'{r["target"]}' + (f' ({r["shards"]} shard{"s" if r["shards"] > 1 else ""})' if r["target"] == "shardcast" else "")
# W: medians and ranges over the rounds.
w = {}
for r in rows:
    if r.get("label"):
        w.setdefault((r["label"], who(r), r["mode"]), []).append(r)
if w:
    def med(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2]
    def spread(rs, k):
        xs = [r[k] for r in rs]
        return f"{med(xs)} ({min(xs)}–{max(xs)})"
    print("\n| W | server | pushes/s, median (range) | CPU µs/push | p99 ms | lost / dup | rounds |\n|---|---|---|---|---|---|---|")
    for (label, server, mode), rs in w.items():
        print(f"| {label}, {mode} | {server} | {spread(rs, 'msgs_per_s')} | {spread(rs, 'server_cpu_us_per_msg')} | "
              f"{spread(rs, 'p99_ms')} | {sum(r['lost'] for r in rs)} / {sum(r['duplicated'] for r in rs)} | {len(rs)} |")
rows = [r for r in rows if not r.get("label")]
print("\n| scenario | server | result |\n|---|---|---|")
for r in rows:
    s = r["scenario"]
    if s == "idle":
        res = f'{r["rss_bytes_per_conn"]} B RSS/conn, {r["conns_per_s"]} conn/s'
    elif s == "push":
        s = f'push, {r["mode"]}'
        res = (f'{r["msgs_per_s"]} msg/s, p50 {r["p50_ms"]} ms, p99 {r["p99_ms"]} ms, p999 {r["p999_ms"]} ms, '
               f'lost {r["lost"]}, dup {r["duplicated"]}, {r["server_cpu_us_per_msg"]} µs CPU/msg')
    elif s == "storm":
        res = f'{r["per_s"]} handshakes/s, p50 {r["p50_ms"]} ms, p99 {r["p99_ms"]} ms, {r["server_cpu_us_per_handshake"]} µs CPU/handshake'
    else:
        s = f'chat, {r["mode"]}'
        res = f'{r["msgs_per_s"]} msg/s, p50 {r["p50_ms"]} ms, p99 {r["p99_ms"]} ms, lost {r["lost"]}, {r["server_cpu_us_per_msg"]} µs CPU/msg'
    print(f"| {s} | {who(r)} | {res} |")
PY
