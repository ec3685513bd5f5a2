#!/usr/bin/env bash
# Build the Newt Android library (AAR) from kotlin/:
#
#   scripts/build-aar.sh               full build; needs the Android NDK, cargo-ndk, the
#                                      Rust Android targets, Gradle and the Android SDK
#   scripts/build-aar.sh --check-host  what can run on any Linux host (CI here): release
#                                      host library with the same linker flags, 16 KB
#                                      alignment of every LOAD segment, bindings
#                                      generation, module layout
#
# Full build:
#   1. cargo ndk -t arm64-v8a -t armeabi-v7a -t x86_64 -o kotlin/src/main/jniLibs
#      build --release -p newt-ffi, linked with -z max-page-size=16384 (Android 15+ devices
#      with 16 KB pages) and with debug info;
#   2. the unstripped libraries go to target/android-symbols/<abi>/ and
#      kotlin/build/outputs/native-debug-symbols/newt_ffi-symbols.zip (upload to Play /
#      crash reporting); the copies in jniLibs are stripped (llvm-strip from the NDK);
#   3. the Kotlin bindings are generated from the host library into kotlin/src/main/kotlin
#      (uniffi/newt_ffi/newt_ffi.kt: generated, gitignored, never edited), with the settings
#      (renames) of bindings/uniffi.toml, the file the Swift bindings are generated with too;
#   4. gradle -p kotlin assembleRelease -> kotlin/build/outputs/aar/newt-release.aar.
#
# Environment:
#   ANDROID_NDK_HOME / ANDROID_NDK_ROOT   the NDK (else the newest $ANDROID_HOME/ndk/*)
#   GRADLE                                Gradle command (default: kotlin/gradlew, gradle)
#   NEWT_CHECK_HOST_FAST=0                --check-host with the real release profile
#                                         (lto, 1 codegen unit: minutes); the default
#                                         turns LTO off there, the page-size check is about
#                                         linker flags
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"

PAGE_SIZE=16384
PAGE_FLAGS="-C link-arg=-Wl,-z,max-page-size=$PAGE_SIZE"
ABIS=(arm64-v8a armeabi-v7a x86_64)
RUST_TARGETS=(aarch64-linux-android armv7-linux-androideabi x86_64-linux-android)
MODULE=kotlin
JNI_DIR=$MODULE/src/main/jniLibs
KOTLIN_SRC=$MODULE/src/main/kotlin
GENERATED=$KOTLIN_SRC/uniffi/newt_ffi/newt_ffi.kt
SYMBOLS_DIR=target/android-symbols

log() { echo "build-aar.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2
    exit "${1:-2}"
}

# Every PT_LOAD segment of $1 must be aligned to 16 KB.
check_alignment() {
    local lib=$1 aligns bad
    command -v readelf >/dev/null || die "readelf not found (binutils)"
    aligns=$(readelf -lW "$lib" | awk '$1 == "LOAD" { print $NF }')
    [[ -n $aligns ]] || die "no LOAD segments in $lib"
    bad=$(echo "$aligns" | grep -v -x "0x$(printf '%x' "$PAGE_SIZE")" || true)
    if [[ -n $bad ]]; then
        readelf -lW "$lib" | grep -E '^ *(Type|LOAD)' >&2
        die "$lib: LOAD segments not aligned to $PAGE_SIZE bytes: $(echo "$bad" | tr '\n' ' ')"
    fi
    log "ok: $(echo "$aligns" | wc -l) LOAD segments of $(basename "$lib") aligned to 0x$(printf '%x' "$PAGE_SIZE")"
}

# Generate the Kotlin bindings from host library $1 into kotlin/src/main/kotlin.
generate_bindings() {
    local lib=$1
    rm -rf "$KOTLIN_SRC/uniffi"
    # No --config: the generator reads bindings/uniffi.toml (the renames Kotlin and Swift share).
    [[ -f bindings/uniffi.toml ]] || die "bindings/uniffi.toml is missing (without its renames the bindings do not compile)"
    cargo run -q -p newt-ffi --bin uniffi-bindgen -- generate --library "$lib" \
        --language kotlin --out-dir "$KOTLIN_SRC" --no-format >&2 \
        || die "uniffi-bindgen generate failed"
    [[ -f $GENERATED ]] || die "bindings generated, but not at $GENERATED"
    log "ok: generated $GENERATED ($(wc -l <"$GENERATED") lines)"
}

# The module has everything Gradle needs (besides jniLibs, checked in the full build).
check_layout() {
    local f missing=()
    for f in "$MODULE/settings.gradle.kts" "$MODULE/build.gradle.kts" "$MODULE/src/main/AndroidManifest.xml" \
        "$MODULE/consumer-rules.pro" "$GENERATED"; do
        [[ -f $f ]] || missing+=("$f")
    done
    [[ ${#missing[@]} -eq 0 ]] || die "missing: ${missing[*]}"
    local wrappers
    wrappers=$(find "$KOTLIN_SRC/org/newt/sdk" -name '*.kt' 2>/dev/null | wc -l)
    [[ $wrappers -gt 0 ]] || die "no wrapper sources in $KOTLIN_SRC/org/newt/sdk"
    grep -q '^package uniffi\.newt_ffi$' "$GENERATED" || die "$GENERATED is not in package uniffi.newt_ffi"
    grep -q 'class NewtClient' "$GENERATED" || die "$GENERATED has no class NewtClient"
    # The generated code loads lib<name>.so; jniLibs/<abi>/ must hold that name.
    grep -q '"newt_ffi"' "$GENERATED" || die "$GENERATED does not load the library \"newt_ffi\""
    grep -rq '^package org\.newt\.sdk$' "$KOTLIN_SRC/org/newt/sdk" || die "wrapper sources are not in package org.newt.sdk"
    local gradle=$MODULE/build.gradle.kts pattern
    for pattern in 'id("com.android.library")' 'namespace = "org.newt.sdk"' 'minSdk = 24' \
        '"arm64-v8a"' '"armeabi-v7a"' '"x86_64"' 'net.java.dev.jna:jna:5.' '@aar' \
        'kotlinx-coroutines-android' 'jniLibs.srcDirs("src/main/jniLibs")'; do
        grep -qF -- "$pattern" "$gradle" || die "$gradle does not contain: $pattern"
    done
    grep -q '/src/main/kotlin/uniffi/' "$MODULE/.gitignore" || die "generated bindings are not gitignored"
    grep -q '/src/main/jniLibs/' "$MODULE/.gitignore" || die "jniLibs are not gitignored"
    log "ok: module layout ($wrappers wrapper sources, generated bindings, Gradle files, manifest)"
}

check_host() {
    command -v cargo >/dev/null || die "cargo not found"
    local host
    host=$(rustc -vV | sed -n 's/^host: //p')
    [[ -n $host ]] || die "could not determine the host target"
    local lib
    if [[ ${NEWT_CHECK_HOST_FAST:-1} != 0 ]]; then
        # The alignment is decided by the linker flag alone (not by LTO or the profile): link
        # the library once more with the flag, reusing the dependencies of the debug build, to
        # keep CI fast. NEWT_CHECK_HOST_FAST=0 builds the real release profile instead.
        log "linking the host library ($host) with $PAGE_FLAGS"
        # shellcheck disable=SC2086
        cargo rustc -p newt-ffi --lib --crate-type cdylib -- $PAGE_FLAGS || die "host link failed"
        lib=target/debug/libnewt_ffi.so
    else
        log "building the release host library ($host) with $PAGE_FLAGS"
        # With an explicit --target, RUSTFLAGS applies to the library but not to build scripts
        # and proc macros (as in cargo-ndk's cross builds), and the output has its own directory.
        RUSTFLAGS="${RUSTFLAGS:-} $PAGE_FLAGS" cargo build --release -p newt-ffi --lib --target "$host" \
            || die "release build failed"
        lib=target/$host/release/libnewt_ffi.so
    fi
    [[ -f $lib ]] || die "$lib missing"
    check_alignment "$lib"
    # The release library (stripped of debug info, maybe LTO) must still carry uniffi's
    # metadata: generate from it.
    generate_bindings "$lib"
    check_layout
    log "host checks passed"
}

find_ndk() {
    local ndk=${ANDROID_NDK_HOME:-${ANDROID_NDK_ROOT:-}}
    if [[ -z $ndk ]]; then
        local sdk=${ANDROID_HOME:-${ANDROID_SDK_ROOT:-}}
        if [[ -n $sdk && -d $sdk/ndk ]]; then
            ndk=$(find "$sdk/ndk" -mindepth 1 -maxdepth 1 -type d | sort -V | tail -n 1)
        fi
    fi
    [[ -n $ndk && -d $ndk/toolchains/llvm/prebuilt ]] && echo "$ndk"
}

find_gradle() {
    if [[ -n ${GRADLE:-} ]]; then echo "$GRADLE"; return 0; fi
    if [[ -x $MODULE/gradlew ]]; then echo "$REPO_ROOT/$MODULE/gradlew"; return 0; fi
    command -v gradle 2>/dev/null
}

zip_dir() { # zip_dir OUT.zip DIR: zip DIR's contents (zip or python3)
    local out=$1 dir=$2
    rm -f "$out"
    if command -v zip >/dev/null; then
        (cd "$dir" && zip -qr "$out" .)
    else
        python3 - "$out" "$dir" <<'PY'
import os, sys, zipfile
out, root = sys.argv[1:3]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            z.write(p, os.path.relpath(p, root))
PY
    fi
}

full_build() {
    # Look for every tool first and say what is missing.
    local missing=() ndk gradle
    command -v cargo >/dev/null || missing+=("cargo (Rust toolchain)")
    if ! cargo ndk --version >/dev/null 2>&1; then missing+=("cargo-ndk (cargo install cargo-ndk)"); fi
    ndk=$(find_ndk) || true
    [[ -n $ndk ]] || missing+=("Android NDK (set ANDROID_NDK_HOME)")
    if command -v rustup >/dev/null; then
        local installed t
        installed=$(rustup target list --installed 2>/dev/null || true)
        for t in "${RUST_TARGETS[@]}"; do
            grep -qx "$t" <<<"$installed" || missing+=("Rust target $t (rustup target add $t)")
        done
    fi
    gradle=$(find_gradle) || true
    [[ -n $gradle ]] || missing+=("Gradle (gradle on PATH, kotlin/gradlew, or GRADLE=...)")
    if [[ -z ${ANDROID_HOME:-${ANDROID_SDK_ROOT:-}} && ! -f $MODULE/local.properties ]]; then
        missing+=("Android SDK (set ANDROID_HOME or write sdk.dir to kotlin/local.properties)")
    fi
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "cannot build the AAR on this machine; missing:"
        local m
        for m in "${missing[@]}"; do log "  - $m"; done
        log "(scripts/build-aar.sh --check-host runs the checks that work without them)"
        exit 1
    fi
    export ANDROID_NDK_HOME=$ndk
    log "NDK $ndk, Gradle $gradle"

    # 1. native libraries: with debug info here; stripped copies go into the AAR (step 2)
    rm -rf "$JNI_DIR"
    local targets=() abi
    for abi in "${ABIS[@]}"; do targets+=(-t "$abi"); done
    RUSTFLAGS="${RUSTFLAGS:-} $PAGE_FLAGS" \
        CARGO_PROFILE_RELEASE_STRIP=none \
        cargo ndk "${targets[@]}" --platform 24 -o "$JNI_DIR" build --release -p newt-ffi \
        || die "cargo ndk build failed"

    # 2. keep the unstripped libraries, strip the packaged ones, check alignment
    local strip
    strip=$(find "$ndk/toolchains/llvm/prebuilt" -path '*/bin/llvm-strip' | head -n 1)
    [[ -n $strip ]] || die "llvm-strip not found in $ndk"
    rm -rf "$SYMBOLS_DIR"
    for abi in "${ABIS[@]}"; do
        local lib=$JNI_DIR/$abi/libnewt_ffi.so
        [[ -f $lib ]] || die "$lib was not built"
        mkdir -p "$SYMBOLS_DIR/$abi"
        cp "$lib" "$SYMBOLS_DIR/$abi/"
        "$strip" --strip-debug "$lib"
        check_alignment "$lib"
        # Only the library itself: cargo-ndk may also copy libc++_shared.so if linked.
    done
    mkdir -p "$MODULE/build/outputs/native-debug-symbols"
    zip_dir "$REPO_ROOT/$MODULE/build/outputs/native-debug-symbols/newt_ffi-symbols.zip" "$SYMBOLS_DIR"
    log "unstripped libraries in $SYMBOLS_DIR and $MODULE/build/outputs/native-debug-symbols/newt_ffi-symbols.zip"

    # 3. bindings from the host library (the same metadata on every target)
    cargo build -p newt-ffi --lib || die "host build failed"
    generate_bindings target/debug/libnewt_ffi.so
    check_layout

    # 4. the AAR
    "$gradle" -p "$MODULE" assembleRelease || die "gradle assembleRelease failed"
    local aar
    aar=$(find "$MODULE/build/outputs/aar" -name '*release*.aar' | head -n 1)
    [[ -n $aar ]] || die "no release AAR in $MODULE/build/outputs/aar"
    for abi in "${ABIS[@]}"; do
        unzip -l "$aar" "jni/$abi/libnewt_ffi.so" >/dev/null 2>&1 || die "$aar lacks jni/$abi/libnewt_ffi.so"
    done
    log "built $aar"
}

case ${1:-} in
"") full_build ;;
--check-host) [[ $# -eq 1 ]] || usage; check_host ;;
-h | --help) usage 0 ;;
*) usage ;;
esac
