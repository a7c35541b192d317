#!/usr/bin/env bash
# The load sequence under which a shard once died of a corrupted heap (issue 20), repeated
# with restarts on the same data directory until MINUTES pass: a 2-shard broker with a
# store cache smaller than its store; per round 10,000 idle notify connections, workload
# W (10,000 subscribers, 16 keep-alive publishers, PUSHES pushes), W open loop at
# 10,000/s, a connection storm, then SIGTERM and a restart. Fails (exit 1) the moment the
# broker dies other than by our SIGTERM, or exits non-zero, and prints how it ended. The
# generator's lines are printed for the record only: the data directory keeps each round's
# unread lists, which the next round's subscribers receive (counted as duplicates), and the
# store grows round by round, so figures are not comparable between rounds.
# Usage: benches/stress.sh [MINUTES] [PUSHES]   (defaults 30 and 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
pushes=${2:-200000}
cargo build --release --bins -q
bench=target/release/shardcast-bench
dir=$(mktemp -d)
trap '[ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
cat > "$dir/stress.toml" <<TOML
listen = "127.0.0.1:0"
data_dir = "$dir/data"
shards = 2
secret = "bench-secret"
admin_key = "bench-admin"
log_level = "warn"
store_cache_bytes = 8388608
ping_interval_secs = 3600.0
idle_timeout_secs = 7200.0
max_messages_per_sec = 1000000
max_inbound_bytes_per_sec = 4000000000
TOML
start() {
  target/release/shardcast --config "$dir/stress.toml" > "$dir/out" 2> "$dir/err" &
  pid=$!
  for _ in $(seq 200); do
    addr=$(sed -n 's/^shardcast listening on //p' "$dir/out")
    [ -n "$addr" ] && return 0
    sleep 0.05
  done
  echo "the broker did not start: $(cat "$dir/err")" >&2
  exit 1
}
alive() {
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" && rc=0 || rc=$?
    echo "FAILED in round $round: the broker died (exit status $rc; 139 is SIGSEGV)" >&2
    tail -20 "$dir/err" >&2
    exit 1
  fi
}
end=$(( $(date +%s) + minutes * 60 ))
round=0
ulimit -n 20000
start
while [ "$(date +%s)" -lt "$end" ]; do
  round=$((round + 1))
  t=(--addr "$addr" --pid "$pid" --max-seconds 300)
  echo "round $round: $(date -u +%T)"
  "$bench" idle --conns 10000 "${t[@]}" | grep '^{' || true; alive
  "$bench" push --conns 10000 --publishers 16 --messages "$pushes" "${t[@]}" | grep '^{' || true; alive
  "$bench" push --conns 10000 --publishers 16 --messages $((pushes / 2)) --rate 10000 "${t[@]}" | grep '^{' || true; alive
  "$bench" storm "${t[@]}" | grep '^{' || true; alive
  kill -TERM "$pid"
  wait "$pid" && rc=0 || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "FAILED in round $round: exit status $rc after SIGTERM" >&2
    tail -20 "$dir/err" >&2
    exit 1
  fi
  start
done
echo "stress: $round rounds in $minutes minutes, the broker never died"
