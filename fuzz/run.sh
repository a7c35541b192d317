#!/usr/bin/env bash
# Builds the fuzz targets and runs each for SECONDS (default 30). The machine's Rust
# toolchain is stable; cargo-fuzz needs nightly flags, which RUSTC_BOOTSTRAP allows.
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(http_head client_frame config cluster_call cluster_reply remote_session cluster_seal)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "fuzz: $t for ${secs}s"
  set +e
  cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" >"fuzz-$t.log" 2>&1
  status=$?
  set -e
  grep -E "^Done|ERROR|panicked|SUMMARY" "fuzz-$t.log" || true
  # cargo fuzz exits non-zero when the target crashes.
  [ "$status" -eq 0 ] || { tail -40 "fuzz-$t.log"; echo "fuzz: $t found a crash (see fuzz/artifacts/$t)"; exit 1; }
done
echo "fuzz: all targets ran ${secs}s without a crash"
