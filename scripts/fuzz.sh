#!/usr/bin/env bash
# Runs every coverage-guided fuzz target in fuzz/ for a bounded time; fails if any target finds
# an input that panics (a broken property) or crashes.
#
#   scripts/fuzz.sh [seconds-per-target]     (default 60)
#
# cargo-fuzz (libFuzzer) on the stable toolchain: `--sanitizer none`, because AddressSanitizer
# needs the nightly-only `-Zsanitizer`; coverage instrumentation (sancov) is stable. The proxy has
# no `unsafe`, so the targets' assertions and Rust's own checks (bounds, and overflow through
# `--debug-assertions`) are what finds bugs. Seeds are in fuzz/seeds/<target>/ and libFuzzer
# dictionaries of the formats' tokens in fuzz/dicts/ (committed); the
# corpus a run grows is kept in fuzz/corpus/<target>/ (ignored by git) and reused by later runs.
# An input that fails is saved in fuzz/artifacts/<target>/; replay it with
#   cd fuzz && cargo fuzz run -s none -a <target> artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
case "$seconds" in
  '' | *[!0-9]*)
    echo "usage: scripts/fuzz.sh [seconds-per-target]" >&2
    exit 2
    ;;
esac

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
  cargo install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi

flags=(--sanitizer none --debug-assertions)
cargo fuzz build "${flags[@]}"

mapfile -t targets < <(cargo fuzz list)
failed=()
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "== fuzz $target: ${seconds}s"
  # -timeout: one input taking over 10 s is a failure too (all targets are microseconds).
  dict=()
  [ -f "dicts/$target.dict" ] && dict=(-dict="dicts/$target.dict")
  if ! cargo fuzz run "${flags[@]}" "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "${dict[@]}" \
    >"corpus/.$target.log" 2>&1; then
    # The broken assertion, then libFuzzer's report (input, how to reproduce).
    grep -A 3 'panicked at' "corpus/.$target.log" >&2 || true
    tail -n 25 "corpus/.$target.log" >&2
    failed+=("$target")
  fi
  # The closing lines: executions, coverage, corpus.
  grep -E '^(#[0-9]+\s+DONE|stat::number_of_executed_units|Done )' "corpus/.$target.log" || true
done

echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "failing targets: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
