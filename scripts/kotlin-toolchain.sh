#!/usr/bin/env bash
# Install (idempotently) what the Kotlin binding tests need on the JVM, without Gradle or
# Maven Central:
#
#   scripts/kotlin-toolchain.sh            install if missing, print the paths
#   source scripts/kotlin-toolchain.sh     same, and export the variables below
#
# - Kotlin compiler from npm (package kotlin-compiler, a full Kotlin distribution) into
#   $NEWT_CACHE/kotlin; its lib/ also has kotlinx-coroutines-core-jvm, kotlin-test and
#   kotlin-test-junit.
# - JNA and JUnit 4 (+ hamcrest) from Debian: apt-get install libjna-java junit4.
#
# Environment: NEWT_CACHE (default <repo>/.cache, gitignored), NEWT_KOTLIN_VERSION
# (default 2.4.20).
#
# Exported (when sourced) / printed: NEWT_KOTLINC, NEWT_KOTLIN_HOME, NEWT_KOTLIN_LIB,
# NEWT_JNA_JAR, NEWT_JUNIT_JAR, NEWT_HAMCREST_JAR, NEWT_KOTLIN_TEST_CP (the test classpath
# without the compiled classes).

_newt_kt_main() {
    local script_dir repo_root
    script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    repo_root=$(cd "$script_dir/.." && pwd)
    local cache=${NEWT_CACHE:-$repo_root/.cache}
    local version=${NEWT_KOTLIN_VERSION:-2.4.20}
    local prefix=$cache/kotlin
    local home=$prefix/node_modules/kotlin-compiler
    local log_prefix="kotlin-toolchain.sh:"

    mkdir -p "$prefix" || return 1

    # --- Kotlin compiler (npm)
    local have=""
    if [[ -f $home/package.json ]]; then
        have=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$home/package.json" | head -n 1)
    fi
    if [[ $have != "$version" || ! -x $home/bin/kotlinc ]]; then
        command -v npm >/dev/null || { echo "$log_prefix npm not found (needed for kotlin-compiler)" >&2; return 1; }
        echo "$log_prefix installing kotlin-compiler@$version into $prefix (about 90 MB)" >&2
        npm install --prefix "$prefix" --no-audit --no-fund --silent "kotlin-compiler@$version" >&2 \
            || { echo "$log_prefix npm install kotlin-compiler@$version failed" >&2; return 1; }
        chmod +x "$home"/bin/* 2>/dev/null || true
    fi
    [[ -x $home/bin/kotlinc ]] || { echo "$log_prefix $home/bin/kotlinc missing after install" >&2; return 1; }

    # --- JNA, JUnit 4, hamcrest (Debian packages)
    local java_dir=/usr/share/java
    if [[ ! -f $java_dir/jna.jar || ! -f $java_dir/junit4.jar ]]; then
        command -v apt-get >/dev/null || { echo "$log_prefix apt-get not found: install JNA and JUnit 4 jars into $java_dir" >&2; return 1; }
        local sudo=""
        [[ $(id -u) -eq 0 ]] || sudo="sudo"
        echo "$log_prefix installing libjna-java junit4 with apt-get" >&2
        if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y libjna-java junit4 >&2; then
            $sudo apt-get update >&2 || true
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y libjna-java junit4 >&2 \
                || { echo "$log_prefix apt-get install libjna-java junit4 failed" >&2; return 1; }
        fi
    fi
    local hamcrest=""
    for f in "$java_dir/hamcrest-core.jar" "$java_dir/hamcrest.jar" "$java_dir/hamcrest-all.jar"; do
        if [[ -f $f ]]; then hamcrest=$f; break; fi
    done
    local lib=$home/lib f
    for f in "$lib/kotlin-stdlib.jar" "$lib/kotlinx-coroutines-core-jvm.jar" "$lib/kotlin-test.jar" \
        "$lib/kotlin-test-junit.jar" "$java_dir/jna.jar" "$java_dir/junit4.jar"; do
        [[ -f $f ]] || { echo "$log_prefix missing $f" >&2; return 1; }
    done
    [[ -n $hamcrest ]] || { echo "$log_prefix no hamcrest jar in $java_dir" >&2; return 1; }

    export NEWT_KOTLIN_HOME=$home
    export NEWT_KOTLINC=$home/bin/kotlinc
    export NEWT_KOTLIN_LIB=$lib
    export NEWT_JNA_JAR=$java_dir/jna.jar
    export NEWT_JUNIT_JAR=$java_dir/junit4.jar
    export NEWT_HAMCREST_JAR=$hamcrest
    export NEWT_KOTLIN_TEST_CP="$lib/kotlin-stdlib.jar:$lib/kotlinx-coroutines-core-jvm.jar:$lib/kotlin-test.jar:$lib/kotlin-test-junit.jar:$NEWT_JNA_JAR:$NEWT_JUNIT_JAR:$NEWT_HAMCREST_JAR"
}

if [[ ${BASH_SOURCE[0]} != "$0" ]]; then
    # sourced: export the variables, do not exit the caller's shell
    _newt_kt_main
    _newt_kt_rc=$?
    unset -f _newt_kt_main
    return $_newt_kt_rc
else
    set -euo pipefail
    _newt_kt_main || exit 1
    echo "NEWT_KOTLINC=$NEWT_KOTLINC"
    echo "NEWT_KOTLIN_HOME=$NEWT_KOTLIN_HOME"
    echo "NEWT_KOTLIN_LIB=$NEWT_KOTLIN_LIB"
    echo "NEWT_JNA_JAR=$NEWT_JNA_JAR"
    echo "NEWT_JUNIT_JAR=$NEWT_JUNIT_JAR"
    echo "NEWT_HAMCREST_JAR=$NEWT_HAMCREST_JAR"
    echo "NEWT_KOTLIN_TEST_CP=$NEWT_KOTLIN_TEST_CP"
fi
