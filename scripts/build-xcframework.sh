#!/usr/bin/env bash
# Build swift/NewtFFI.xcframework and the generated Swift bindings for the Swift package in
# swift/ (on a Mac with Xcode), or check on any machine what can be checked without Xcode.
#
#   scripts/build-xcframework.sh                 on macOS with Xcode: the full build
#   scripts/build-xcframework.sh --check-host    anywhere: host library build, sqlite3 symbol
#                                                check, Swift generation, swift/ layout check
#
# Options:
#   --check-host          run only the checks that work without Xcode (see below)
#   --profile NAME        cargo profile (default: release for the XCFramework, dev for
#                         --check-host)
#   --no-macos            skip the macOS slices (then the package only builds for iOS)
#   --check-sqlite-hidden with --check-host: also build the host library with the XCFramework's
#                         LIBSQLITE3_FLAGS into target/xcf-check (a separate target dir; a cold
#                         build, minutes) and check that sqlite3_* in libnewt_ffi.a are HIDDEN
#   --debug-info-in-framework
#                         put the unstripped archives into the XCFramework, so that the app's
#                         own dSYM gets Rust line tables (bigger framework)
#
# Full build (macOS + Xcode + rustup):
#   1. rustup target add aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios
#      (and aarch64-apple-darwin x86_64-apple-darwin unless --no-macos)
#   2. cargo build -p newt-ffi --lib for each target, with
#        LIBSQLITE3_FLAGS='-DSQLITE_API=__attribute__((visibility("hidden")))'
#      so the SQLite that rusqlite's `bundled` feature compiles into our library has hidden
#      sqlite3_* symbols (never exported next to, or instead of, the system libsqlite3), and
#      IPHONEOS_DEPLOYMENT_TARGET=15.0 / MACOSX_DEPLOYMENT_TARGET=12.0 (Package.swift)
#   3. lipo: one simulator archive (arm64 + x86_64), one macOS archive (arm64 + x86_64)
#   4. uniffi-bindgen generate --library ... --language swift (library mode): newt_ffi.swift
#      -> swift/Sources/NewtFFIBindings/, header + module.modulemap -> the framework headers
#   5. xcodebuild -create-xcframework with the STATIC libraries -> swift/NewtFFI.xcframework
#   6. unstripped archives stay in swift/build/unstripped/<slice>/libnewt_ffi.a; the
#      framework gets copies stripped of debug info (strip -S) unless --debug-info-in-framework
#   7. verifies with nm that no archive defines an exported (non-private) sqlite3_* symbol
#
# Static, not dynamic: an app and its notification service extension are separate processes
# and separate binaries; each links its own copy of libnewt_ffi.a (no embedded framework to
# share or sign twice). They share the Newt store through an App Group container: pass
# FileManager.default.containerURL(forSecurityApplicationGroupIdentifier:) as the store dir
# in both.
#
# --check-host (this is what runs on Linux; no Xcode needed):
#   a. cargo build -p newt-ffi (host target) -> target/<profile>/libnewt_ffi.so (+ .a)
#   b. sqlite3 symbols: `nm -D --defined-only libnewt_ffi.so | grep sqlite3_` must be empty;
#      also reports the visibility of sqlite3_* in the host static archive (readelf)
#   c. Swift generation in library mode into a temp dir (with bindings/uniffi.toml, whose
#      Kotlin and Swift renames must be the same); checks the file set, that the Swift file
#      imports the FFI module the module map declares, and that the declarations the
#      hand-written Swift in swift/ uses exist in the generated code (so also the renames)
#   d. layout of swift/: Package.swift targets, folders, .gitignore of generated files
#   Steps needing Xcode are reported as skipped.
set -uo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
SWIFT_DIR=$REPO_ROOT/swift
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
SQLITE_HIDDEN_FLAGS='-DSQLITE_API=__attribute__((visibility("hidden")))'
IOS_TARGETS=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios)
MACOS_TARGETS=(aarch64-apple-darwin x86_64-apple-darwin)

MODE=full
PROFILE=
WITH_MACOS=1
DEBUG_IN_FRAMEWORK=0
CHECK_SQLITE_HIDDEN=0
while [[ $# -gt 0 ]]; do
    case $1 in
    --check-host) MODE=check-host ;;
    --profile) PROFILE=${2:?--profile needs a name}; shift ;;
    --no-macos) WITH_MACOS=0 ;;
    --debug-info-in-framework) DEBUG_IN_FRAMEWORK=1 ;;
    --check-sqlite-hidden) CHECK_SQLITE_HIDDEN=1 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { echo "build-xcframework: $*" >&2; }
die() { log "error: $*"; exit 1; }

cd "$REPO_ROOT" || exit 1
RESULTS=()
FAILED=0
record() { # record ok|FAIL|skip MESSAGE
    RESULTS+=("$(printf '%-5s %s' "$1" "$2")")
    [[ $1 == FAIL ]] && FAILED=1
    return 0
}
summary() {
    echo
    echo "================ build-xcframework.sh ($MODE) ================"
    printf '%s\n' "${RESULTS[@]}"
    if [[ $FAILED -ne 0 ]]; then echo "RESULT: FAILED"; exit 1; fi
    echo "RESULT: ok"
}

profile_dir() { # cargo's output folder name for a profile
    case $1 in dev | test) echo debug ;; bench) echo release ;; *) echo "$1" ;; esac
}

have_xcode() {
    [[ $(uname -s) == Darwin ]] && command -v xcodebuild >/dev/null 2>&1 \
        && xcodebuild -version >/dev/null 2>&1 && xcrun --find lipo >/dev/null 2>&1
}

# Generate Swift + header + modulemap from LIB into OUT (library mode). No --config: the
# generator reads bindings/uniffi.toml, the settings the Kotlin is generated with too.
generate_swift() {
    local lib=$1 out=$2
    [[ -f $REPO_ROOT/bindings/uniffi.toml ]] || { log "error: bindings/uniffi.toml is missing"; return 1; }
    mkdir -p "$out"
    cargo run -q -p newt-ffi --bin uniffi-bindgen -- generate --library "$lib" \
        --language swift --out-dir "$out" --no-format >&2
}

# The FFI (C) module name declared by the generated module map, e.g. newt_ffiFFI.
ffi_module_name() {
    sed -n 's/^[[:space:]]*\(framework \)\{0,1\}module[[:space:]]\{1,\}\([A-Za-z0-9_]*\).*/\2/p' "$1" | head -n 1
}

# ================================================================ --check-host

check_host() {
    local prof=${PROFILE:-dev} dir lib staticlib gen
    dir=$TARGET_DIR/$(profile_dir "$prof")
    lib=$dir/libnewt_ffi.so
    staticlib=$dir/libnewt_ffi.a

    # a. host build
    log "cargo build -p newt-ffi --profile $prof (host)"
    if cargo build -p newt-ffi --lib --profile "$prof" >&2 && [[ -f $lib ]]; then
        record ok "host library built: ${lib#"$REPO_ROOT"/}"
    else
        record FAIL "host library build (cargo build -p newt-ffi --profile $prof)"
        return
    fi

    # b. sqlite3 symbols
    local exported
    exported=$(nm -D --defined-only "$lib" | grep -c 'sqlite3_')
    if [[ $exported -eq 0 ]]; then
        record ok "no sqlite3_* symbol exported by ${lib#"$REPO_ROOT"/} (nm -D --defined-only)"
    else
        record FAIL "$exported sqlite3_* symbols exported by ${lib#"$REPO_ROOT"/}, e.g. $(nm -D --defined-only "$lib" | grep -m3 'sqlite3_' | awk '{print $3}' | tr '\n' ' ')"
    fi
    if [[ -f $staticlib ]] && command -v readelf >/dev/null; then
        local default hidden
        # GLOBAL FUNC/OBJECT definitions (not UND) named sqlite3_*, by visibility
        default=$(readelf -sW "$staticlib" 2>/dev/null | awk '$5 == "GLOBAL" && $6 == "DEFAULT" && $7 != "UND" && $8 ~ /^sqlite3_/' | wc -l)
        hidden=$(readelf -sW "$staticlib" 2>/dev/null | awk '$5 == "GLOBAL" && $6 == "HIDDEN" && $7 != "UND" && $8 ~ /^sqlite3_/' | wc -l)
        record info "host static archive ${staticlib#"$REPO_ROOT"/}: $default sqlite3_* global symbols with default visibility, $hidden hidden (the build here does not set LIBSQLITE3_FLAGS; the XCFramework build does)"
    fi

    if [[ $CHECK_SQLITE_HIDDEN -eq 1 ]]; then
        check_sqlite_hidden "$prof"
    fi

    # c. Swift generation
    check_shared_renames
    gen=$(mktemp -d "${TMPDIR:-/tmp}/newt-xcf-check.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$gen'" EXIT
    if ! generate_swift "$lib" "$gen"; then
        record FAIL "Swift generation (uniffi-bindgen generate --library --language swift)"
    else
        local swift header modmap ffi_mod
        swift=$(find "$gen" -name '*.swift' | head -n 1)
        header=$(find "$gen" -name '*.h' | head -n 1)
        modmap=$(find "$gen" -name '*.modulemap' | head -n 1)
        if [[ -n $swift && -n $header && -n $modmap ]]; then
            record ok "Swift generated: $(cd "$gen" && ls | tr '\n' ' ')"
            ffi_mod=$(ffi_module_name "$modmap")
            if [[ -n $ffi_mod ]] && grep -q "^import $ffi_mod\$" "$swift" \
                && grep -q "header \"$(basename "$header")\"" "$modmap"; then
                record ok "module map declares '$ffi_mod' with $(basename "$header"); $(basename "$swift") imports it"
            else
                record FAIL "module map ($(basename "$modmap"), module '$ffi_mod') and $(basename "$swift") do not match"
            fi
            check_api_names "$swift"
        else
            record FAIL "Swift generation produced: $(cd "$gen" && ls | tr '\n' ' ') (want .swift, .h, .modulemap)"
        fi
    fi

    # d. layout
    check_layout

    if have_xcode; then
        record info "Xcode is present: run without --check-host for the XCFramework"
    else
        record skip "XCFramework build, lipo, Swift compilation, XCTest: need macOS with Xcode (not here)"
    fi
}

# The XCFramework's LIBSQLITE3_FLAGS, tried on the host: a separate target dir, so the normal
# build is not rebuilt; every sqlite3_* definition in the static archive must be HIDDEN.
check_sqlite_hidden() {
    local prof=$1 dir a default hidden
    dir=$REPO_ROOT/target/xcf-check
    a=$dir/$(profile_dir "$prof")/libnewt_ffi.a
    log "building with LIBSQLITE3_FLAGS=$SQLITE_HIDDEN_FLAGS into ${dir#"$REPO_ROOT"/} (cold: several minutes)"
    if ! LIBSQLITE3_FLAGS=$SQLITE_HIDDEN_FLAGS CARGO_TARGET_DIR=$dir \
        cargo build -p newt-ffi --lib --profile "$prof" >&2 || [[ ! -f $a ]]; then
        record FAIL "host build with LIBSQLITE3_FLAGS (CARGO_TARGET_DIR=${dir#"$REPO_ROOT"/})"
        return
    fi
    default=$(readelf -sW "$a" 2>/dev/null | awk '$5 == "GLOBAL" && $6 != "HIDDEN" && $7 != "UND" && $8 ~ /^sqlite3_/' | wc -l)
    hidden=$(readelf -sW "$a" 2>/dev/null | awk '$5 == "GLOBAL" && $6 == "HIDDEN" && $7 != "UND" && $8 ~ /^sqlite3_/' | wc -l)
    if [[ $default -eq 0 && $hidden -gt 0 ]]; then
        record ok "with LIBSQLITE3_FLAGS: $hidden sqlite3_* symbols in ${a#"$REPO_ROOT"/} are HIDDEN, none default"
    else
        record FAIL "with LIBSQLITE3_FLAGS: $default sqlite3_* symbols not hidden, $hidden hidden in ${a#"$REPO_ROOT"/}"
    fi
}

# bindings/uniffi.toml renames the same items the same way for Kotlin and Swift (uniffi 0.32
# has no rename table shared by all languages), so the app sees one API (bindings/API.md).
# A rename that must differ goes into ALLOWED_DIFFERENCES, with its reason in bindings/API.md.
check_shared_renames() {
    local out
    if out=$(python3 - "$REPO_ROOT/bindings/uniffi.toml" 2>&1 <<'PY'
import sys
try:
    import tomllib
except ImportError:
    print("needs Python 3.11 or later (tomllib)")
    sys.exit(1)
ALLOWED_DIFFERENCES = set()   # "Type.item" keys; none so far
with open(sys.argv[1], "rb") as f:
    bindings = tomllib.load(f).get("bindings", {})
kotlin = bindings.get("kotlin", {}).get("rename", {})
swift = bindings.get("swift", {}).get("rename", {})
if not kotlin or not swift:
    print("no [bindings.kotlin.rename] or no [bindings.swift.rename]")
    sys.exit(1)
differ = sorted(k for k in kotlin.keys() | swift.keys()
                if kotlin.get(k) != swift.get(k) and k not in ALLOWED_DIFFERENCES)
if differ:
    print("; ".join(f"{k}: Kotlin {kotlin.get(k)!r}, Swift {swift.get(k)!r}" for k in differ))
    sys.exit(1)
print(len(kotlin))
PY
    ); then
        record ok "bindings/uniffi.toml: Kotlin and Swift get the same $out renames"
    else
        record FAIL "bindings/uniffi.toml: Kotlin and Swift renames differ: $out"
    fi
}

# Declarations that the hand-written Swift in swift/ (helpers and tests) relies on, looked up
# in the generated file after removing doc comments and normalising whitespace. A missing one
# means swift/ no longer matches the bindings (there is no compiler here to say so).
check_api_names() {
    local swift=$1 out
    if out=$(python3 - "$swift" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)      # doc comments
text = re.sub(r"\s+", " ", text)
text = re.sub(r"\s*\(\s*", "(", text)
text = re.sub(r"\s*\)", ")", text)
text = re.sub(r"\s*,\s*", ", ", text)
text = re.sub(r"\s*->\s*", " -> ", text)
text = re.sub(r"\)(async|throws)", r") \1", text)
wanted = """
class NewtClient: NewtClientProtocol
static func create(config: ClientConfig) async throws -> NewtClient
func loginPassword(user: String, password: String, deviceId: String?) async throws -> Session
func restoreSession() async throws -> Session?
func session() -> Session?
func ownFingerprint() throws -> String
func syncOnce(timeoutMs: UInt64) async throws
func startSync() throws
func stopSync() async throws
func createEncryptedRoom(name: String?, invite: [String]) async throws -> String
func joinRoom(roomIdOrAlias: String) async throws -> String
func sendText(roomId: String, body: String) async throws -> String
func devices(userId: String) async throws -> [DeviceInfo]
func deleteDevice(deviceId: String) async throws
func subscribeTimeline(roomId: String, listener: TimelineListener) throws -> TimelineSubscription
func setPromptHandler(handler: PromptHandler?) throws
func setTrustPolicyProvider(provider: TrustPolicyProvider?) throws
func setBackgroundScheduler(scheduler: BackgroundScheduler?) throws
func runDueWork() async throws -> DueWorkReport
func shutdown()
class TimelineSubscription: TimelineSubscriptionProtocol
func cancel()
public func setLogger(logger: Logger?, level: LogLevel)
public func newtVersion() -> String
public protocol TimelineListener: AnyObject
func onUpdate(update: TimelineUpdate) throws
public protocol Logger: AnyObject
func log(record: LogRecord) throws
public protocol PromptHandler: AnyObject
func onPrompt(prompt: Prompt) throws -> PromptAnswer
public protocol TrustPolicyProvider: AnyObject
func policyForRoom(roomId: String) throws -> TrustPolicy
public protocol BackgroundScheduler: AnyObject
func scheduleWakeup(request: WakeupRequest) throws
enum NewtError: Swift.Error
case Network(details: String)
case Server(status: UInt16, errcode: String, details: String)
case InvalidResponse(details: String)
case WrongStoreKey
case AccountMismatch(userId: String, deviceId: String, storedUserId: String, storedDeviceId: String)
case NotLoggedIn
case PromptDismissed
case Closed
case bytes(key: Data)
case passphrase(passphrase: String)
case initial(items: [TimelineItem], echoes: [LocalEcho])
case localEcho(echo: LocalEcho)
case sendStateChanged(transactionId: String, state: SendState)
case echoReplaced(transactionId: String, item: TimelineItem)
case uploading(sentBytes: UInt64, totalBytes: UInt64)
case NotQueued(transactionId: String)
case appended(item: TimelineItem)
case password(userId: String, reason: String)
case password(password: SecretText)
case dismissed
case verifiedOnly
case trace
public init(homeserver: String, storeDir: String, storeKey: StoreKey)
public var userId: String
public var deviceId: String
public var eventId: String
public var roomId: String
public var sender: String
public var body: String?
public var decrypted: Bool
public var error: String?
public var trustPolicy: TrustPolicy
public var senderTrust: SenderTrust?
public var hiddenByPolicy: Bool
public var verified: Bool
case deviceOnly
case crossSignedOnly
case allButBlacklisted
func setRoomSharingPolicy(roomId: String, policy: SharingPolicy?) throws
func sharingPolicy(roomId: String) throws
func bootstrapCrossSigning() async throws
func identity(userId: String) async throws
func verifyIdentity(userId: String) async throws
public var deleted: Bool
public var level: LogLevel
public var target: String
public var message: String
public var delayMs: UInt64
public var reason: String
public var requiresNetwork: Bool
public var completed: UInt32
public var remaining: UInt32
func requestVerification(userId: String, deviceId: String?) async throws
func verification(flowId: String) throws
func queueMessage(roomId: String, message: OutgoingMessage) async throws -> String
func queueAttachment(roomId: String, path: String, mimetype: String, name: String) async throws -> String
func localEchoes(roomId: String) async throws -> [LocalEcho]
func cancelSend(transactionId: String) async throws
func editQueued(transactionId: String, message: OutgoingMessage) async throws
func retrySend(transactionId: String) async throws
func downloadAttachment(contentJson: String, path: String, maxBytes: UInt64) async throws -> UInt64
public var contentJson: String
public var transactionId: String
case verificationRequest(
case compareSas(
case verificationDone(
case verificationCancelled(
case mismatch
case requested
case done(
case cancelled(
public var emoji: [SasEmoji]
public var decimals: [UInt16]
public var flowId: String
public var state: VerificationState
func decrypt(roomId: String, eventId: String, eventJson: String?, budgetMs: UInt64) async throws
static func `open`(config: ClientConfig)
public var body: String?
public var encrypted: Bool
func exportRoomKeys(path: String, passphrase: String, roomIds: [String]?, listener: KeyTransferListener?) async throws -> UInt64
func importRoomKeys(path: String, passphrase: String, listener: KeyTransferListener?) async throws -> KeyImportSummary
public protocol KeyTransferListener: AnyObject
func onProgress(done: UInt64, total: UInt64) throws
case KeyFileRefused(reason: KeyFileProblem, details: String)
case File(details: String)
case wrongPassphrase
case notAKeyFile
case updated(item: TimelineItem)
public var imported: UInt64
public var alreadyKnown: UInt64
public var refused: UInt64
public var waitingForKey: Bool
public var legacy: Bool
public var failure: DecryptionFailure?
func enableBackup() async throws -> String
func setUpRecovery() async throws
func recover() async throws -> KeyImportSummary
func restoreBackup(recoveryKey: String, roomId: String?, listener: KeyTransferListener?) async throws -> KeyImportSummary
func recoveryKey() async throws -> String?
func backupState() async throws -> BackupState
func backupInfo() async throws -> BackupInfo?
func uploadBackup() async throws -> UInt64
func subscribeBackup(listener: BackupStateListener) throws -> BackupSubscription
func onState(state: BackupState)
func cancel()
case Backup(reason: BackupProblem, details: String)
case invalidRecoveryKey
case wrongRecoveryKey
case disabled
case enabled(version: String, pending: UInt64)
case recoveryKey(previousError: String?)
case newRecoveryKey(recoveryKey: SecretText)
case recoveryKey(recoveryKey: SecretText)
public convenience init(text: String)
open func expose() -> String
public var version: String
public var algorithm: String
public var count: UInt64
public var trusted: Bool
public var ours: Bool
public var total: UInt64
case InvalidInput(details: String)
"""
lines = [l for l in wanted.strip().splitlines() if l.strip()]
missing = [l for l in lines if l not in text]
if missing:
    print("; ".join(missing))
    sys.exit(1)
print(len(lines))
PY
    ); then
        record ok "all $out declarations used by swift/ exist in the generated Swift"
    else
        record FAIL "declarations used by swift/ missing from the generated Swift: $out"
    fi
}

check_layout() {
    local problems=() f
    for f in Package.swift README.md .gitignore Sources/NewtFFIBindings/README.md; do
        [[ -f $SWIFT_DIR/$f ]] || problems+=("missing swift/$f")
    done
    compgen -G "$SWIFT_DIR/Sources/Newt/*.swift" >/dev/null || problems+=("no swift/Sources/Newt/*.swift")
    compgen -G "$SWIFT_DIR/Tests/NewtTests/*.swift" >/dev/null || problems+=("no swift/Tests/NewtTests/*.swift")
    local pkg=$SWIFT_DIR/Package.swift
    if [[ -f $pkg ]]; then
        grep -q '\.binaryTarget(name: "NewtFFI", path: "NewtFFI.xcframework")' "$pkg" || problems+=("Package.swift: no binaryTarget NewtFFI at NewtFFI.xcframework")
        grep -q 'name: "NewtFFIBindings"' "$pkg" || problems+=("Package.swift: no target NewtFFIBindings")
        grep -q '\.target(' "$pkg" && grep -q 'name: "Newt",' "$pkg" || problems+=("Package.swift: no target Newt")
        grep -q '\.testTarget(' "$pkg" && grep -q 'name: "NewtTests"' "$pkg" || problems+=("Package.swift: no test target NewtTests")
        grep -q '\.iOS(\.v15)' "$pkg" && grep -q '\.macOS(\.v12)' "$pkg" || problems+=("Package.swift: platforms are not iOS 15 / macOS 12")
    fi
    if git -C "$REPO_ROOT" rev-parse --git-dir >/dev/null 2>&1; then
        for f in swift/NewtFFI.xcframework/Info.plist swift/Sources/NewtFFIBindings/newt_ffi.swift swift/build/x; do
            git -C "$REPO_ROOT" check-ignore -q "$f" || problems+=("$f is not gitignored")
        done
        if git -C "$REPO_ROOT" check-ignore -q swift/Sources/NewtFFIBindings/README.md; then
            problems+=("swift/Sources/NewtFFIBindings/README.md is gitignored (the folder would vanish)")
        fi
    fi
    if [[ ${#problems[@]} -eq 0 ]]; then
        record ok "swift/ layout: Package.swift targets, sources, tests, .gitignore of generated files"
    else
        record FAIL "swift/ layout: ${problems[*]}"
    fi
}

# ================================================================ full build (macOS + Xcode)

full_build() {
    local prof=${PROFILE:-release} pdir build=$SWIFT_DIR/build targets t
    pdir=$(profile_dir "$prof")
    if ! have_xcode; then
        record skip "XCFramework build: needs macOS with Xcode (xcodebuild, lipo, the iOS SDKs); not found here"
        log "Xcode not found: nothing was built. On this machine run: $0 --check-host"
        FAILED=1
        summary
    fi
    targets=("${IOS_TARGETS[@]}")
    [[ $WITH_MACOS -eq 1 ]] && targets+=("${MACOS_TARGETS[@]}")

    rustup target add "${targets[@]}" >&2 || die "rustup target add ${targets[*]} failed"

    export LIBSQLITE3_FLAGS=$SQLITE_HIDDEN_FLAGS
    export IPHONEOS_DEPLOYMENT_TARGET=15.0 MACOSX_DEPLOYMENT_TARGET=12.0
    # Debug info in the build (line tables), kept in the unstripped copies; never strip here.
    export CARGO_PROFILE_RELEASE_DEBUG=${CARGO_PROFILE_RELEASE_DEBUG:-line-tables-only}
    export CARGO_PROFILE_RELEASE_STRIP=none
    for t in "${targets[@]}"; do
        log "cargo build -p newt-ffi --lib --profile $prof --target $t"
        cargo build -p newt-ffi --lib --profile "$prof" --target "$t" >&2 || die "build for $t failed"
        [[ -f $TARGET_DIR/$t/$pdir/libnewt_ffi.a ]] || die "no libnewt_ffi.a for $t"
    done
    record ok "built libnewt_ffi.a for ${targets[*]} (LIBSQLITE3_FLAGS=$LIBSQLITE3_FLAGS)"

    rm -rf "$build"
    mkdir -p "$build/unstripped" "$build/framework-libs" "$build/headers" "$build/generated"
    # one archive per platform: device, simulator (lipo), macOS (lipo)
    mkdir -p "$build/unstripped/ios" "$build/unstripped/ios-simulator"
    cp "$TARGET_DIR/aarch64-apple-ios/$pdir/libnewt_ffi.a" "$build/unstripped/ios/"
    xcrun lipo -create \
        "$TARGET_DIR/aarch64-apple-ios-sim/$pdir/libnewt_ffi.a" \
        "$TARGET_DIR/x86_64-apple-ios/$pdir/libnewt_ffi.a" \
        -output "$build/unstripped/ios-simulator/libnewt_ffi.a" || die "lipo (simulator) failed"
    local slices=(ios ios-simulator)
    if [[ $WITH_MACOS -eq 1 ]]; then
        mkdir -p "$build/unstripped/macos"
        xcrun lipo -create \
            "$TARGET_DIR/aarch64-apple-darwin/$pdir/libnewt_ffi.a" \
            "$TARGET_DIR/x86_64-apple-darwin/$pdir/libnewt_ffi.a" \
            -output "$build/unstripped/macos/libnewt_ffi.a" || die "lipo (macOS) failed"
        slices+=(macos)
    fi
    record ok "lipo: $(for s in "${slices[@]}"; do printf '%s [%s] ' "$s" "$(xcrun lipo -archs "$build/unstripped/$s/libnewt_ffi.a")"; done)"

    local s
    for s in "${slices[@]}"; do
        mkdir -p "$build/framework-libs/$s"
        cp "$build/unstripped/$s/libnewt_ffi.a" "$build/framework-libs/$s/"
        if [[ $DEBUG_IN_FRAMEWORK -eq 0 ]]; then
            xcrun strip -S "$build/framework-libs/$s/libnewt_ffi.a" || die "strip -S ($s) failed"
        fi
    done
    record ok "unstripped archives kept in swift/build/unstripped/<slice>/ (framework copies $([[ $DEBUG_IN_FRAMEWORK -eq 1 ]] && echo 'with' || echo 'without') debug info)"

    # sqlite3 symbols: none may be an exported (non-private) external symbol
    local leaked=0 n
    for s in "${slices[@]}"; do
        n=$(xcrun nm -m "$build/framework-libs/$s/libnewt_ffi.a" 2>/dev/null \
            | grep -E ' external _sqlite3_' | grep -v -c 'private external')
        if [[ $n -ne 0 ]]; then
            leaked=1
            log "$s: $n exported sqlite3_* symbols, e.g.:"
            xcrun nm -m "$build/framework-libs/$s/libnewt_ffi.a" | grep -E ' external _sqlite3_' | grep -v 'private external' | head -n 3 >&2
        fi
    done
    if [[ $leaked -eq 0 ]]; then
        record ok "nm: sqlite3_* symbols are private externs in every slice (not exported)"
    else
        record FAIL "nm: sqlite3_* symbols exported from the archives (LIBSQLITE3_FLAGS not applied?)"
    fi

    # Swift bindings, header, module map (library mode), from the macOS or device build
    local genlib=$TARGET_DIR/aarch64-apple-ios/$pdir/libnewt_ffi.a
    [[ $WITH_MACOS -eq 1 ]] && genlib=$TARGET_DIR/aarch64-apple-darwin/$pdir/libnewt_ffi.dylib
    generate_swift "$genlib" "$build/generated" || die "uniffi-bindgen generate failed"
    local modmap header ffi_mod
    modmap=$(find "$build/generated" -name '*.modulemap' | head -n 1)
    header=$(find "$build/generated" -name '*.h' | head -n 1)
    ffi_mod=$(ffi_module_name "$modmap")
    [[ -n $ffi_mod && -n $header ]] || die "generated module map or header missing"
    # Headers/<module>/module.modulemap: a subfolder, so that several XCFrameworks in one app
    # do not all put a module.modulemap into the same include folder.
    mkdir -p "$build/headers/$ffi_mod"
    cp "$header" "$build/headers/$ffi_mod/"
    cp "$modmap" "$build/headers/$ffi_mod/module.modulemap"
    find "$SWIFT_DIR/Sources/NewtFFIBindings" -name '*.swift' -delete
    cp "$build/generated/"*.swift "$SWIFT_DIR/Sources/NewtFFIBindings/"
    record ok "generated $(cd "$build/generated" && ls *.swift) -> swift/Sources/NewtFFIBindings/; module $ffi_mod headers -> framework"

    rm -rf "$SWIFT_DIR/NewtFFI.xcframework"
    local args=()
    for s in "${slices[@]}"; do
        args+=(-library "$build/framework-libs/$s/libnewt_ffi.a" -headers "$build/headers")
    done
    xcodebuild -create-xcframework "${args[@]}" -output "$SWIFT_DIR/NewtFFI.xcframework" >&2 \
        || die "xcodebuild -create-xcframework failed"
    record ok "swift/NewtFFI.xcframework ($(cd "$SWIFT_DIR/NewtFFI.xcframework" && ls -d */ | tr -d / | tr '\n' ' '))"
    log "next: cd swift && swift build && NEWT_HOMESERVER=http://127.0.0.1:8008 swift test"
    summary
}

if [[ $MODE == check-host ]]; then
    check_host
    summary
else
    full_build
fi
