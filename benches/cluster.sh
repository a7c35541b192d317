#!/usr/bin/env bash
# The cost of a hop between nodes: a two-node shardcast cluster on one NATS (all on this
# machine, loopback), measured by shardcast-bench with the CPU of both brokers and of
# nats-server counted. Three placements of the same push workload:
#   local  - subscribers on their owner node, pushes sent to that node;
#   call   - subscribers on their owner node (1), pushes sent to node 0 (one NATS call);
#   remote - subscribers owned by node 1 but connected to node 0 (remote sessions),
#            pushes sent to node 0 (a call there and the frame back).
# Usage: benches/cluster.sh [ROUNDS]   (default 1). Installs nats-server if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-1}
[ -x /usr/sbin/nats-server ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null; }
cargo build --release --bins -q
bench=target/release/shardcast-bench
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
/usr/sbin/nats-server -a 127.0.0.1 -p "$port" >/dev/null 2>&1 &
nats_pid=$!
pids+=("$nats_pid")
sleep 0.5
addrs=()
node_pids=()
for i in 0 1; do
  cat > "$dir/node-$i.toml" <<EOF
listen = "127.0.0.1:0"
data_dir = "$dir/data-$i"
shards = 1
secret = "bench-secret"
admin_key = "bench-admin"
log_level = "warn"
ping_interval_secs = 3600.0
idle_timeout_secs = 7200.0
max_messages_per_sec = 1000000
max_inbound_bytes_per_sec = 4000000000
cluster = { node = $i, nodes = 2, nats = ["nats://127.0.0.1:$port"], name = "bench", call_timeout_ms = 5000, secret = "bench-cluster-secret" }
EOF
  target/release/shardcast --config "$dir/node-$i.toml" > "$dir/out-$i" &
  pids+=("$!")
  node_pids+=("$!")
  for _ in $(seq 100); do grep -q "listening on" "$dir/out-$i" && break; sleep 0.1; done
  addrs+=("$(sed -n 's/shardcast listening on //p' "$dir/out-$i")")
done
cpu="${node_pids[0]},${node_pids[1]},$nats_pid"
run() {
  label=$1; shift
  echo "+ $label: $*" >&2
  "$bench" push --pid "$cpu" --nodes 2 "$@" | tee -a /dev/stderr | grep '^{' |
    python3 -c 'import json,sys; r=json.load(sys.stdin); r["label"]=sys.argv[1]; print(json.dumps(r))' "$label" >> "$dir/results"
}
n=0
for _ in $(seq "$rounds"); do
  for loop in "--messages 20000" "--messages 25000 --rate 5000"; do
    n=$((n + 1))
    # A fresh uid prefix per run: no run sees another's unread lists.
    run local  $loop --conns 2000 --publishers 16 --uid-prefix "l$n-" --owner-node 0 --addr "${addrs[0]}" --publish-addr "${addrs[0]}"
    run call   $loop --conns 2000 --publishers 16 --uid-prefix "c$n-" --owner-node 1 --addr "${addrs[1]}" --publish-addr "${addrs[0]}"
    run remote $loop --conns 2000 --publishers 16 --uid-prefix "r$n-" --owner-node 1 --addr "${addrs[0]}" --publish-addr "${addrs[0]}"
  done
done
python3 - "$dir/results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
groups = {}
for r in rows:
    groups.setdefault((r["label"], r["mode"]), []).append(r)
def spread(rs, k):
    xs = sorted(r[k] for r in rs)
    return f"{xs[len(xs) // 2]} ({xs[0]}–{xs[-1]})" if len(xs) > 1 else f"{xs[0]}"
print("\n| placement | loop | pushes/s, median (range) | CPU µs per push (2 brokers + NATS) | p50 ms | p99 ms | lost / dup | rounds |\n|---|---|---|---|---|---|---|---|")
for (label, mode), rs in groups.items():
    print(f"| {label} | {mode} | {spread(rs, 'msgs_per_s')} | {spread(rs, 'server_cpu_us_per_msg')} | {spread(rs, 'p50_ms')} | "
          f"{spread(rs, 'p99_ms')} | {sum(r['lost'] for r in rs)} / {sum(r['duplicated'] for r in rs)} | {len(rs)} |")
PY
