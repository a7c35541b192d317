#!/usr/bin/env bash
# Soak (issue 11): a release broker (2 shards, group durability) with 5,000 subscribers
# and 2,000 pushes/s from 16 keep-alive publishers for SECS seconds (default 600): the
# first 60 s alone ("before"), the rest with one hostile client per attack at once
# (benches/hostile.py). Broker RSS is sampled every 10 s. Loopback only; every loop is
# bounded. Usage: benches/soak.sh [SECS]   (ONLY="offline flood,..." picks attacks;
# SOAK_TOML="key = value" adds config lines, e.g. SOAK_TOML="store_cache_bytes = 16777216";
# SOAK_RETENTION=secs sets retention_interval_secs, default 10; ONLY=none runs no attack)
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-600}
during=$((total - 60))
cargo build --release --locked --bins
dir=$(mktemp -d)
trap 'kill -TERM "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/soak.toml" <<TOML
listen = "127.0.0.1:0"
data_dir = "$dir/data"
shards = 2
secret = "bench-secret"
admin_key = "bench-admin"
log_level = "warn"
# The load generator's readers do not answer pings.
ping_interval_secs = 3600.0
idle_timeout_secs = 7200.0
# The offline flood writes history at megabytes per second: keep a bounded amount.
history_max_per_user = 2000
retention_interval_secs = ${SOAK_RETENTION:-10.0}
${SOAK_TOML:-}
TOML
target/release/shardcast --config "$dir/soak.toml" > "$dir/out" 2> "$dir/err" &
pid=$!
for _ in $(seq 100); do grep -q listening "$dir/out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/shardcast listening on //p' "$dir/out")
echo "soak: broker pid $pid on $addr, $total s"
( for _ in $(seq $((total / 10 + 60))); do
    kill -0 "$pid" 2>/dev/null || break
    echo "$(date +%s) $(awk '/VmRSS/{print $2}' /proc/$pid/status)"
    sleep 10
  done ) > "$dir/rss" &
bench() {
  target/release/shardcast-bench push --addr "$addr" --pid "$pid" --conns 5000 \
    --publishers 16 --rate 2000 --messages $(($1 * 2000)) --max-seconds $(($1 + 60)) \
    --uid-prefix "$2"
}
echo "soak: before (no hostile clients)"
bench 60 before | tail -2
echo "soak: during (one hostile client per attack)"
python3 benches/hostile.py --addr "$addr" --secret bench-secret --admin bench-admin \
  --seconds "$during" ${ONLY:+--only "$ONLY"} > "$dir/hostile" 2>&1 &
hostile=$!
bench "$during" during | tail -2
wait "$hostile" || true
cat "$dir/hostile"
echo "soak: broker RSS (KiB) every 10 s:"
awk '{print $2}' "$dir/rss" | tr '\n' ' '; echo
echo "soak: broker stderr lines: $(wc -l < "$dir/err")"
head -5 "$dir/err"
