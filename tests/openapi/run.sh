#!/usr/bin/env bash
# schemathesis against the real broker with docs/openapi.yaml (issue 24): every answer must
# conform to the spec (status, content type, schema, headers), and no generated input may
# get a 5xx — once with valid data (positive) and once with invalid data (negative).
#
# Installs a pinned schemathesis into a virtual environment (.schemathesis-venv, ignored),
# uses the broker binary cargo built (target/debug/shardcast, built when missing), and
# leaves nothing running. Usage: tests/openapi/run.sh [max examples per operation]
set -euo pipefail
cd "$(dirname "$0")/../.."

SCHEMATHESIS_VERSION=4.32.5
VENV=${SHARDCAST_OPENAPI_VENV:-.schemathesis-venv}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${SHARDCAST_BIN:-$TARGET/debug/shardcast}

if [ ! -x "$VENV/bin/st" ] || [ "$("$VENV/bin/st" --version 2>/dev/null)" != "schemathesis, version $SCHEMATHESIS_VERSION" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
if [ ! -x "$BIN" ]; then
  cargo build --locked --bin shardcast
fi

exec "$VENV/bin/python" tests/openapi/run.py "$BIN" "$VENV/bin/st" "${1:-60}"
