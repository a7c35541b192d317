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

# Pinned: schemathesis (the run), openapi-spec-validator (the file is valid OpenAPI 3.1).
PINS="schemathesis==4.32.5 openapi-spec-validator==0.9.0"
VENV=${SHARDCAST_OPENAPI_VENV:-.schemathesis-venv}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${SHARDCAST_BIN:-$TARGET/debug/shardcast}

if [ "$(cat "$VENV/pins" 2>/dev/null)" != "$PINS" ]; then
  # Debian's own python3 needs python3-venv for this; other Pythons carry it.
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$VENV"
    python3 -m venv "$VENV"
  fi
  # shellcheck disable=SC2086 # one word a pin
  "$VENV/bin/pip" install --quiet --disable-pip-version-check $PINS
  echo "$PINS" >"$VENV/pins"
fi
"$VENV/bin/openapi-spec-validator" docs/openapi.yaml
if [ ! -x "$BIN" ]; then
  cargo build --locked --bin shardcast
fi

exec "$VENV/bin/python" tests/openapi/run.py "$BIN" "$VENV/bin/st" "${1:-100}"
