#!/usr/bin/env bash
# Newt's full check: the one command to run before submitting, and what CI runs
# (.ci/run). Works on a fresh clone on a fresh Debian machine with the Rust toolchain:
#
#   scripts/test.sh
#
# Steps: Synapse venv (cached in .cache/), rustfmt, clippy, all tests with
# cargo-nextest (end-to-end tests start their own Synapse servers), a fuzzing smoke run
# (nightly toolchain, cargo-fuzz installed if missing), Kotlin tests, Swift checks.
# Every step runs even if an earlier one failed; the exit code is non-zero if any failed.
set -uo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT" || exit 1

RESULTS=()
FAILED=0
NEXTEST_LOG=$REPO_ROOT/target/nextest-output.log

step() {
    local name=$1 start rc
    shift
    echo
    echo "==> $name"
    start=$SECONDS
    "$@"
    rc=$?
    if [[ $rc -eq 0 ]]; then
        RESULTS+=("ok    $name ($((SECONDS - start))s)")
    else
        RESULTS+=("FAIL  $name (exit $rc, $((SECONDS - start))s)")
        FAILED=1
    fi
    return 0
}

ensure_nextest() {
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest --version | head -n 1
        return 0
    fi
    echo "cargo-nextest not found; installing it with cargo install (takes a few minutes)"
    cargo install cargo-nextest --locked
}

install_synapse() {
    bash scripts/synapse.sh install
}

fmt_check() {
    cargo fmt --all -- --check
}

clippy() {
    cargo clippy --workspace --all-targets -- -D warnings
}

nextest() {
    mkdir -p "$(dirname "$NEXTEST_LOG")"
    cargo nextest run --workspace --no-fail-fast 2>&1 | tee "$NEXTEST_LOG"
    return "${PIPESTATUS[0]}"
}

kotlin_tests() {
    # Kotlin bindings on the JVM against a real Synapse, plus the AAR host checks.
    bash scripts/kotlin-test.sh
}

disk_use() {
    echo "disk: $(df -h --output=avail "$REPO_ROOT" | tail -n 1 | tr -d ' ') free;" \
        "target/ $(du -sh "$REPO_ROOT/target" 2>/dev/null | cut -f1)," \
        "fuzz/target/ $(du -sh "$REPO_ROOT/fuzz/target" 2>/dev/null | cut -f1)"
}

disk_use
step "cargo-nextest available" ensure_nextest
if [[ ${RESULTS[-1]} == FAIL* ]]; then
    echo "cannot run the tests without cargo-nextest" >&2
    exit 1
fi
step "Synapse installed (scripts/synapse.sh install)" install_synapse
step "cargo fmt --all -- --check" fmt_check
step "newt-ffi builds with the workspace's features (scripts/feature-parity.sh)" bash scripts/feature-parity.sh
step "cargo clippy --workspace --all-targets -- -D warnings" clippy
step "cargo nextest run --workspace --no-fail-fast" nextest
# nextest does not run doctests; the examples in the crate docs must compile.
step "cargo test --workspace --doc" cargo test --workspace --doc
step "Fuzz smoke run, 5 s per target (scripts/fuzz.sh smoke)" bash scripts/fuzz.sh smoke
step "Kotlin tests" kotlin_tests
step "Swift syntax check (scripts/swift-check.sh)" bash scripts/swift-check.sh
step "Swift host checks (build-xcframework.sh --check-host)" bash scripts/build-xcframework.sh --check-host

# A test harness bug could leave a server behind: say so (don't kill what we can't
# attribute to this run).
leftover=$(pgrep -f "$REPO_ROOT/.cache/synapse-venv/bin/python -m synapse.app.homeserver" || true)
if [[ -n $leftover ]]; then
    echo
    echo "warning: Synapse processes still running after the tests: $(echo "$leftover" | tr '\n' ' ')"
fi

echo
disk_use
echo
echo "================ summary ================"
for line in "${RESULTS[@]}"; do
    echo "$line"
done
if [[ -f $NEXTEST_LOG ]]; then
    # nextest's own closing line (test counts)
    grep -E '^ *Summary \[' "$NEXTEST_LOG" | tail -n 1 | sed 's/^ *//'
fi
if [[ $FAILED -ne 0 ]]; then
    echo "RESULT: FAILED"
    exit 1
fi
echo "RESULT: all checks succeeded"
