#!/usr/bin/env bash
# The Kotlin binding tests, on the JVM (no Gradle, no Android needed):
#
#   scripts/kotlin-test.sh
#
# 1. installs the toolchain if missing (scripts/kotlin-toolchain.sh: kotlinc from npm, JNA
#    and JUnit 4 from apt), builds the host library (cargo build -p newt-ffi);
# 2. generates the Kotlin bindings in library mode into a temporary directory (never
#    committed, never edited; settings, e.g. renames, from bindings/uniffi.toml) and
#    compiles them to a jar cached under $NEWT_CACHE/kotlin-test/, keyed by the hash of the
#    generated source (saves ~20 s);
# 3. compiles the wrapper (kotlin/src/main/kotlin/org/...) and the tests
#    (kotlin/src/test/kotlin) with kotlinc;
# 4. runs scripts/build-aar.sh --check-host (release host library with the 16 KB page
#    linker flag, LOAD segment alignment, bindings generation, AAR module layout);
# 5. starts a Synapse (scripts/synapse.sh; always stopped on exit) and runs the JUnit tests
#    with -Djna.library.path=target/debug, NEWT_HOMESERVER=<its URL>.
#
# The last line of output is "N passed, M failed" (N and M count the JUnit tests plus the
# --check-host check); the exit code is non-zero if anything failed.
#
# Environment:
#   NEWT_CACHE                  cache dir (default <repo>/.cache)
#   NEWT_KOTLIN_SKIP_AAR_CHECK  set to 1 to skip step 4
#   NEWT_KOTLIN_TESTS           space-separated test class names to run (default: all *Test)
#   NEWT_KOTLIN_KEEP_TMP        set to 1 to keep the temporary directory (stores, logs)
#   NEWT_KOTLIN_TEST_TIMEOUT    seconds for the whole JUnit run (default 600)
set -uo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT" || exit 1
export NEWT_CACHE=${NEWT_CACHE:-$REPO_ROOT/.cache}

PASSED=0
FAILED=0

log() { echo "kotlin-test.sh: $*" >&2; }

summary_and_exit() {
    echo
    echo "$PASSED passed, $FAILED failed"
    if [[ $FAILED -ne 0 || $PASSED -eq 0 ]]; then exit 1; fi
    exit 0
}

# A step that must succeed for the tests to run at all: on failure, count one failure and stop.
fatal() {
    log "error: $*"
    FAILED=$((FAILED + 1))
    summary_and_exit
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/newt-kotlin-test.XXXXXX") || exit 1
SYNAPSE_DIR=$WORK/synapse

JAVA_PID=
cleanup() {
    local rc=$?
    if [[ -n $JAVA_PID ]] && kill -0 "$JAVA_PID" 2>/dev/null; then
        kill -TERM "$JAVA_PID" 2>/dev/null
        wait "$JAVA_PID" 2>/dev/null
    fi
    if [[ -d $SYNAPSE_DIR ]]; then
        bash "$REPO_ROOT/scripts/synapse.sh" stop "$SYNAPSE_DIR" || log "warning: could not stop Synapse in $SYNAPSE_DIR"
    fi
    if [[ ${NEWT_KOTLIN_KEEP_TMP:-0} == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- toolchain, host library

# shellcheck source=scripts/kotlin-toolchain.sh
source "$REPO_ROOT/scripts/kotlin-toolchain.sh" || fatal "the Kotlin toolchain could not be installed"
KOTLINC=$NEWT_KOTLINC
CP=$NEWT_KOTLIN_TEST_CP
KOTLINC_VERSION=$(cat "$NEWT_KOTLIN_HOME/build.txt" 2>/dev/null || echo unknown)
log "kotlinc $KOTLINC_VERSION, $(java -version 2>&1 | head -n 1)"

step_start=$SECONDS
cargo build -p newt-ffi || fatal "cargo build -p newt-ffi failed"
LIB_DIR=$REPO_ROOT/target/debug
LIB=$LIB_DIR/libnewt_ffi.so
[[ -f $LIB ]] || fatal "$LIB missing after the build"
log "host library built ($((SECONDS - step_start))s)"

# ---------------------------------------------------------------- bindings

GEN_DIR=$WORK/generated
# No --config: the generator reads bindings/uniffi.toml (the renames Kotlin and Swift share).
[[ -f bindings/uniffi.toml ]] || fatal "bindings/uniffi.toml is missing (without its renames the bindings do not compile)"
cargo run -q -p newt-ffi --bin uniffi-bindgen -- generate --library "$LIB" --language kotlin \
    --out-dir "$GEN_DIR" --no-format >&2 || fatal "uniffi-bindgen generate failed"
GENERATED=$GEN_DIR/uniffi/newt_ffi/newt_ffi.kt
[[ -f $GENERATED ]] || fatal "expected $GENERATED; generated: $(cd "$GEN_DIR" && find . -type f | tr '\n' ' ')"

BINDINGS_CACHE=$NEWT_CACHE/kotlin-test
mkdir -p "$BINDINGS_CACHE"
key=$({ sha256sum <"$GENERATED"; echo "kotlinc $KOTLINC_VERSION"; echo "$CP"; } | sha256sum | cut -c1-24)
BINDINGS_JAR=$BINDINGS_CACHE/bindings-$key.jar
if [[ -f $BINDINGS_JAR ]]; then
    log "generated bindings unchanged: using $BINDINGS_JAR"
else
    step_start=$SECONDS
    log "compiling the generated bindings ($(wc -l <"$GENERATED") lines)"
    "$KOTLINC" -nowarn -jvm-target 17 -classpath "$CP" -d "$WORK/bindings.jar" "$GENERATED" \
        || fatal "kotlinc failed on the generated bindings"
    # keep only the newest jar
    find "$BINDINGS_CACHE" -maxdepth 1 -name 'bindings-*.jar' -delete
    mv "$WORK/bindings.jar" "$BINDINGS_JAR"
    log "bindings compiled ($((SECONDS - step_start))s)"
fi

# ---------------------------------------------------------------- wrapper and tests

mapfile -t MAIN_SOURCES < <(find kotlin/src/main/kotlin -name '*.kt' -not -path 'kotlin/src/main/kotlin/uniffi/*' | sort)
mapfile -t TEST_SOURCES < <(find kotlin/src/test/kotlin -name '*.kt' | sort)
[[ ${#MAIN_SOURCES[@]} -gt 0 ]] || fatal "no wrapper sources in kotlin/src/main/kotlin"
[[ ${#TEST_SOURCES[@]} -gt 0 ]] || fatal "no tests in kotlin/src/test/kotlin"
CLASSES=$WORK/classes
step_start=$SECONDS
"$KOTLINC" -jvm-target 17 -Werror -classpath "$CP:$BINDINGS_JAR" -d "$CLASSES" \
    "${MAIN_SOURCES[@]}" "${TEST_SOURCES[@]}" || fatal "kotlinc failed on the wrapper or the tests"
log "wrapper and tests compiled ($((SECONDS - step_start))s)"

# ---------------------------------------------------------------- AAR layout / 16 KB check

if [[ ${NEWT_KOTLIN_SKIP_AAR_CHECK:-0} == 1 ]]; then
    log "skipping scripts/build-aar.sh --check-host (NEWT_KOTLIN_SKIP_AAR_CHECK=1)"
else
    step_start=$SECONDS
    echo "RUN   scripts/build-aar.sh --check-host"
    if bash "$REPO_ROOT/scripts/build-aar.sh" --check-host; then
        PASSED=$((PASSED + 1))
        echo "PASS  scripts/build-aar.sh --check-host ($((SECONDS - step_start))s)"
    else
        FAILED=$((FAILED + 1))
        echo "FAIL  scripts/build-aar.sh --check-host ($((SECONDS - step_start))s)"
    fi
fi

# ---------------------------------------------------------------- Synapse and JUnit

if [[ -n ${NEWT_KOTLIN_TESTS:-} ]]; then
    read -r -a TEST_CLASSES <<<"$NEWT_KOTLIN_TESTS"
else
    mapfile -t TEST_CLASSES < <(cd "$CLASSES" && find . -name '*Test.class' -not -name '*$*' \
        | sed -e 's|^\./||' -e 's|\.class$||' -e 's|/|.|g' | sort)
fi
[[ ${#TEST_CLASSES[@]} -gt 0 ]] || fatal "no compiled *Test classes"

step_start=$SECONDS
HOMESERVER=$(NEWT_SYNAPSE_WATCH_PID=$$ bash "$REPO_ROOT/scripts/synapse.sh" start "$SYNAPSE_DIR") \
    || fatal "Synapse did not start"
log "Synapse at $HOMESERVER ($((SECONDS - step_start))s)"

RESULTS=$WORK/junit-results
STORES=$WORK/stores
mkdir -p "$STORES"
step_start=$SECONDS
NEWT_HOMESERVER=$HOMESERVER NEWT_SYNAPSE_DIR=$SYNAPSE_DIR NEWT_REPO_ROOT=$REPO_ROOT NEWT_KOTLIN_TMP=$STORES \
    timeout -k 10 "${NEWT_KOTLIN_TEST_TIMEOUT:-600}" \
    java -Xmx512m -Djna.library.path="$LIB_DIR" -Dnewt.results="$RESULTS" \
    -classpath "$CLASSES:$BINDINGS_JAR:$CP" org.newt.sdk.TestMainKt "${TEST_CLASSES[@]}" &
# In the background so that a signal runs the cleanup trap at once, not after the JVM exits.
JAVA_PID=$!
wait "$JAVA_PID"
junit_rc=$?
JAVA_PID=
log "JUnit finished with exit code $junit_rc ($((SECONDS - step_start))s)"
if [[ -f $RESULTS ]]; then
    read -r junit_passed junit_failed <"$RESULTS"
    PASSED=$((PASSED + junit_passed))
    FAILED=$((FAILED + junit_failed))
    if [[ $junit_rc -ne 0 && $junit_failed -eq 0 ]]; then FAILED=$((FAILED + 1)); fi
else
    log "error: the JUnit run ended without results (crash or timeout, exit code $junit_rc)"
    FAILED=$((FAILED + 1))
fi
summary_and_exit
