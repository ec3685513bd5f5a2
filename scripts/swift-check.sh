#!/usr/bin/env bash
# Syntax check of all Swift code of Newt. There is no Swift compiler on these machines, so
# this PARSES Swift with tree-sitter-swift; it does not type-check or compile anything.
#
#   scripts/swift-check.sh
#
# 1. installs tree-sitter + tree-sitter-swift (pinned) into $NEWT_CACHE/swift-venv
#    (default <repo>/.cache/swift-venv) on first use
# 2. self-test: a deliberately broken Swift snippet must be reported (with file:line), a
#    valid one with uniffi's `#if swift(>=5.8)` attribute block must pass, and the one known
#    tree-sitter-swift gap (`{ () }`, see swift_parse.py) is exempt only on uniffi's exact line
# 3. builds the host library (cargo build -p newt-ffi) and generates the Swift bindings from
#    it into a temporary directory (uniffi-bindgen, library mode)
# 4. parses every Swift file - the generated bindings and swift/**/*.swift including
#    Package.swift (not the gitignored copies build-xcframework.sh puts into
#    swift/Sources/NewtFFIBindings/, nor .build/) - with scripts/swift_parse.py
#
# Output: `ok FILE` / `FAIL FILE` with `FILE:LINE:COL: ERROR|MISSING ...` lines; the last line
# is always `N passed, M failed` (one count per file; a file that could not be generated or
# read counts as failed). Exit status 0 only if M is 0 and the self-test passed.
#
# Environment: NEWT_CACHE (cache dir), CARGO_TARGET_DIR (as for cargo), NEWT_SWIFT_PYTHON
# (python used to create the venv, default python3).
set -uo pipefail

TREE_SITTER_VERSION=0.26.1
TREE_SITTER_SWIFT_VERSION=0.7.4

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
NEWT_CACHE=${NEWT_CACHE:-$REPO_ROOT/.cache}
VENV=$NEWT_CACHE/swift-venv
VENV_PY=$VENV/bin/python
STAMP=$VENV/.newt-swift-venv
WANT_STAMP="tree-sitter==$TREE_SITTER_VERSION tree-sitter-swift==$TREE_SITTER_SWIFT_VERSION"
PARSER=$SCRIPT_DIR/swift_parse.py
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
HOST_LIB=$TARGET_DIR/debug/libnewt_ffi.so

log() { echo "swift-check: $*" >&2; }

cd "$REPO_ROOT" || exit 1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/newt-swift-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# Hand-written Swift files (sorted, stable output).
mapfile -t HAND_WRITTEN < <(find swift -name '*.swift' \
    -not -path 'swift/.build/*' -not -path 'swift/build/*' \
    -not -path 'swift/Sources/NewtFFIBindings/*' 2>/dev/null | LC_ALL=C sort)

# Every file we mean to check, even if a step fails before the parser runs.
count_all_failed() {
    local extra=$1
    echo "$(( ${#HAND_WRITTEN[@]} + extra )) files not checked" >&2
    echo "0 passed, $(( ${#HAND_WRITTEN[@]} + extra )) failed"
    exit 1
}

# ---------------------------------------------------------------- 1. venv

install_venv() {
    mkdir -p "$NEWT_CACHE"
    exec 8>"$NEWT_CACHE/swift-venv.lock"
    flock 8
    if [[ -x $VENV_PY && -f $STAMP && $(cat "$STAMP") == "$WANT_STAMP" ]] \
        && "$VENV_PY" -c 'import tree_sitter, tree_sitter_swift' 2>/dev/null; then
        exec 8>&-
        return 0
    fi
    local py=${NEWT_SWIFT_PYTHON:-python3}
    log "installing $WANT_STAMP into $VENV"
    rm -rf "$VENV"
    "$py" -m venv "$VENV" >&2 || { log "error: '$py -m venv' failed (install python3-venv)"; return 1; }
    "$VENV_PY" -m pip install --disable-pip-version-check --quiet \
        "tree-sitter==$TREE_SITTER_VERSION" "tree-sitter-swift==$TREE_SITTER_SWIFT_VERSION" >&2 \
        || { log "error: pip install failed"; return 1; }
    echo "$WANT_STAMP" >"$STAMP"
    exec 8>&-
}

if ! install_venv; then
    count_all_failed 1
fi

# ---------------------------------------------------------------- 2. self-test

self_test() {
    local bad=$WORK/selftest/Broken.swift good=$WORK/selftest/Valid.swift out rc
    mkdir -p "$WORK/selftest"
    # line 3 is broken: a missing closing parenthesis
    cat >"$bad" <<'SWIFT'
import Foundation

func broken(_ x: Int -> Int {
    return x
}
SWIFT
    cat >"$good" <<'SWIFT'
import Foundation

#if swift(>=5.8)
@_documentation(visibility: private)
#endif
public struct Valid: Sendable {
    public var x: Int
    public func twice() async throws -> Int { 2 * x }
}
SWIFT
    out=$("$VENV_PY" "$PARSER" "$bad" 2>&1)
    rc=$?
    if [[ $rc -eq 0 ]] || ! grep -q "^$bad:3:" <<<"$out" || [[ $(tail -n 1 <<<"$out") != "0 passed, 1 failed" ]]; then
        log "self-test FAILED: the broken snippet was not reported at line 3 (exit $rc):"
        echo "$out" >&2
        return 1
    fi
    log "self-test: broken snippet reported as expected: $(grep -m1 "^$bad:3:" <<<"$out" | sed "s|$WORK/||")"
    out=$("$VENV_PY" "$PARSER" "$good" 2>&1)
    rc=$?
    if [[ $rc -ne 0 ]]; then
        log "self-test FAILED: a valid snippet with an '#if swift(>=5.8)' block was rejected:"
        echo "$out" >&2
        return 1
    fi
    log "self-test: valid snippet with an '#if swift(>=5.8)' block passes"
    # The known tree-sitter gap (`{ () }`) is accepted only on uniffi's exact line.
    local gap=$WORK/selftest/Gap.swift
    printf 'func f() {\n    let writeReturn = { () }\n    let other = { () }\n    _ = (writeReturn, other)\n}\n' >"$gap"
    out=$("$VENV_PY" "$PARSER" "$gap" 2>&1)
    if ! grep -q "^$gap:3:" <<<"$out" || grep -q "^$gap:2:" <<<"$out"; then
        log "self-test FAILED: '{ () }' must be reported on line 3 only (the gap exemption is wrong):"
        echo "$out" >&2
        return 1
    fi
    log "self-test: '{ () }' exempt only on uniffi's 'let writeReturn = { () }' line"
}

SELF_TEST_FAILED=0
self_test || SELF_TEST_FAILED=1

# ---------------------------------------------------------------- 3. generate

GENERATED_DIR=$WORK/generated
mkdir -p "$GENERATED_DIR"
generate() {
    log "building the host library (cargo build -p newt-ffi)"
    cargo build -p newt-ffi --lib >&2 || { log "error: cargo build -p newt-ffi failed"; return 1; }
    [[ -f $HOST_LIB ]] || { log "error: $HOST_LIB not found after the build"; return 1; }
    log "generating Swift bindings from $HOST_LIB"
    cargo run -q -p newt-ffi --bin uniffi-bindgen -- generate --library "$HOST_LIB" \
        --language swift --out-dir "$GENERATED_DIR" --no-format >&2 \
        || { log "error: uniffi-bindgen generate failed"; return 1; }
}

FILES=()
if generate; then
    mapfile -t GENERATED < <(find "$GENERATED_DIR" -name '*.swift' | LC_ALL=C sort)
    if [[ ${#GENERATED[@]} -eq 0 ]]; then
        log "error: the generator wrote no .swift file"
        FILES+=("$GENERATED_DIR/newt_ffi.swift")   # reported as unreadable -> failed
    fi
    FILES+=("${GENERATED[@]}")
else
    FILES+=("$GENERATED_DIR/newt_ffi.swift")       # not generated -> counted as failed
fi
FILES+=("${HAND_WRITTEN[@]}")

# ---------------------------------------------------------------- 4. parse

OUT=$("$VENV_PY" "$PARSER" "${FILES[@]}")
RC=$?
SUMMARY=$(tail -n 1 <<<"$OUT")
# show generated files by their name, not the temp path
sed '$d' <<<"$OUT" | sed "s|$GENERATED_DIR/|<generated>/|g"
if [[ $SELF_TEST_FAILED -ne 0 ]]; then
    log "the parser self-test failed: results above cannot be trusted"
    RC=1
fi
if [[ ! $SUMMARY =~ ^[0-9]+\ passed,\ [0-9]+\ failed$ ]]; then
    log "error: unexpected parser output"
    echo "$OUT" >&2
    count_all_failed 0
fi
echo "$SUMMARY"
exit $(( RC == 0 ? 0 : 1 ))
