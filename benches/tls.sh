#!/usr/bin/env bash
# TLS (issue 14): what native TLS costs beside plain TCP, with the load generator.
#   - idle: CONNS connections held (default 10000), server RSS per connection, plain and
#     TLS, each on 1 and 2 shards;
#   - storm: SECS seconds (default 5) of connect/disconnect churn with 4 workers (token
#     over keep-alive HTTP(S), then a new connection, upgrade, unread list), plain and TLS.
# The certificate is a fresh self-signed ECDSA P-256 one for localhost (openssl).
# Loopback only; every loop is bounded. Usage: benches/tls.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-1}
conns=${CONNS:-10000}
secs=${SECS:-5}
cargo build --release --locked --bins
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
bench=target/release/shardcast-bench
for r in $(seq 1 "$rounds"); do
  echo "== round $r"
  for shards in 1 2; do
    $bench idle --shards "$shards" --conns "$conns" | head -1
    $bench idle --shards "$shards" --conns "$conns" --tls "$dir/cert.pem,$dir/key.pem" | head -1 | sed 's/^idle/idle TLS/'
  done
  for shards in 1 2; do
    $bench storm --shards "$shards" --seconds "$secs" | head -1
    $bench storm --shards "$shards" --seconds "$secs" --tls "$dir/cert.pem,$dir/key.pem" | head -1 | sed 's/^storm/storm TLS/'
  done
done
