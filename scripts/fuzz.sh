#!/usr/bin/env bash
# Fuzzing Newt with cargo-fuzz (libFuzzer) on the nightly toolchain. The targets are in
# fuzz/fuzz_targets (one line each); the harnesses in core/src/fuzzing.rs.
#
#   scripts/fuzz.sh smoke            # every target for a few seconds (scripts/test.sh runs it)
#   scripts/fuzz.sh run [SECONDS]    # every target in parallel, with AddressSanitizer
#                                    # (default 600 s each); crashes land in fuzz/artifacts/
#   scripts/fuzz.sh run SECONDS TARGET...
#
# Installs cargo-fuzz with `cargo install` if it is missing. Seeds are in fuzz/seeds/TARGET;
# what the fuzzer finds goes to fuzz/corpus/TARGET (not committed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGETS=(to_device room_event keys_query store_records)

ensure_cargo_fuzz() {
    if ! cargo +nightly --version >/dev/null 2>&1; then
        echo "the nightly toolchain is needed for fuzzing (rustup toolchain install nightly)" >&2
        exit 1
    fi
    if ! cargo fuzz --version >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked
    fi
}

run_target() {
    local target=$1 seconds=$2
    shift 2
    mkdir -p "fuzz/corpus/$target"
    cargo +nightly fuzz run "$@" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1
}

ensure_cargo_fuzz
case "${1:-}" in
smoke)
    # No sanitizer: the smoke run checks that every target builds, takes its seeds and
    # survives a few seconds of mutations; the long runs use AddressSanitizer.
    for target in "${TARGETS[@]}"; do
        run_target "$target" 5 --dev --sanitizer none
    done
    ;;
run)
    seconds=${2:-600}
    shift $(($# > 1 ? 2 : 1))
    chosen=("${@:-${TARGETS[@]}}")
    cargo +nightly fuzz build -O
    pids=()
    for target in "${chosen[@]}"; do
        run_target "$target" "$seconds" -O >"fuzz/$target.log" 2>&1 &
        pids+=($!)
    done
    failed=0
    for i in "${!pids[@]}"; do
        if ! wait "${pids[$i]}"; then
            echo "fuzz target ${chosen[$i]} failed: see fuzz/${chosen[$i]}.log" >&2
            failed=1
        fi
        grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "fuzz/${chosen[$i]}.log" | tail -n 2 || true
    done
    exit "$failed"
    ;;
*)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
