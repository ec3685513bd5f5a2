#!/usr/bin/env bash
# Newt demo: two users exchange end-to-end encrypted messages through a real, local
# Synapse homeserver, using the `newt` command-line client.
#
#   scripts/demo.sh
#
# It builds the CLI (cargo build -p newt-cli), starts a throw-away Synapse in a temp
# dir (always stopped on exit), registers alice and bob, and then:
#   alice and bob log in (each with their own encrypted store), alice creates an
#   encrypted room and invites bob, bob joins and listens while alice sends two
#   messages, bob replies while alice listens; the decrypted messages are printed as a
#   transcript, and bob shows alice's devices; alice exports her room keys to a
#   passphrase-protected key file (the format Element imports); last, alice sets up a key
#   backup on the server, logs in on a new device, restores her keys there with the
#   recovery key, and reads bob's earlier reply, decrypted, on the new device.
# Exits non-zero if any message is missing or failed to decrypt, or the export, the backup
# or the restore failed.
#
# Environment: NEWT_DEMO_KEEP=1 keeps the temp dir (stores, server log) for inspection;
# NEWT_BIN=path uses that binary instead of building target/debug/newt;
# NEWT_DEMO_LISTEN_DELAY=seconds (default 2) between starting a listener and sending.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SYNAPSE_SH=$REPO_ROOT/scripts/synapse.sh
LISTEN_TIMEOUT=60

if [[ -t 1 ]]; then
    say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    say() { printf '\n== %s\n' "$*"; }
fi
die() {
    echo "demo: error: $*" >&2
    exit 1
}

command -v python3 >/dev/null || die "python3 is needed to print the transcript"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/newt-demo.XXXXXX")
HS_DIR=$WORK/synapse
BG_PIDS=()

cleanup() {
    local rc=$?
    local pid
    for pid in "${BG_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    bash "$SYNAPSE_SH" stop "$HS_DIR" || true
    if [[ ${NEWT_DEMO_KEEP:-0} == 1 ]]; then
        echo "demo: kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- build the CLI

if [[ -n ${NEWT_BIN:-} ]]; then
    NEWT=$NEWT_BIN
else
    say "Building the CLI (cargo build -p newt-cli)"
    (cd "$REPO_ROOT" && cargo build -p newt-cli)
    NEWT=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/newt
fi
[[ -x $NEWT ]] || die "CLI binary not found at $NEWT"

# ---------------------------------------------------------------- homeserver

say "Starting a local Synapse"
HS_URL=$(bash "$SYNAPSE_SH" start "$HS_DIR")
echo "homeserver: $HS_URL (data in $HS_DIR)"

ALICE_PASSWORD=alice-demo-password
BOB_PASSWORD=bob-demo-password
ALICE=$(bash "$SYNAPSE_SH" register "$HS_DIR" alice "$ALICE_PASSWORD")
BOB=$(bash "$SYNAPSE_SH" register "$HS_DIR" bob "$BOB_PASSWORD")
echo "registered $ALICE and $BOB"

# newt_as WHO ARGS...: run the CLI with WHO's store and key (alice, bob, or alice-new:
# alice's second device).
newt_as() {
    local who=$1
    shift
    NEWT_STORE_KEY="$who's demo store passphrase" \
        "$NEWT" --homeserver "$HS_URL" --store "$WORK/$who-store" "$@"
}

# transcript FILE RECIPIENT_ID EXPECTED_BODY...: print the JSON lines of `newt listen`
# as "alice -> bob: hello (decrypted, device XYZ)"; fails if a line did not decrypt or an
# expected body is missing.
transcript() {
    python3 - "$@" <<'PY'
import json, sys

path, recipient, expected = sys.argv[1], sys.argv[2], sys.argv[3:]

def name(user_id):
    return user_id[1:].split(":", 1)[0] if user_id.startswith("@") else user_id

ok, got = True, []
with open(path, encoding="utf-8") as f:
    for line in f:
        line = line.strip()
        if not line:
            continue
        try:
            m = json.loads(line)
        except ValueError:
            print(f"  (not JSON: {line!r})")
            ok = False
            continue
        sender = m.get("sender") or "?"
        if sender == recipient:
            continue  # our own message echoed back
        device = m.get("sender_device") or "?"
        if m.get("decrypted") is True and not m.get("error"):
            print(f"  {name(sender)} -> {name(recipient)}: {m.get('body')} "
                  f"(decrypted, device {device})")
            got.append(m.get("body"))
        else:
            print(f"  {name(sender)} -> {name(recipient)}: <NOT DECRYPTED: "
                  f"{m.get('error') or 'no error given'}> (device {device}, "
                  f"event {m.get('event_id')})")
            ok = False
for body in expected:
    if body not in got:
        print(f"  MISSING: {body!r} never arrived decrypted")
        ok = False
sys.exit(0 if ok else 1)
PY
}

# listen_bg WHO COUNT OUTFILE: start `newt listen` in the background; sets LISTEN_PID.
listen_bg() {
    local who=$1 count=$2 out=$3
    # run the binary itself in the background (not a shell function) so that $! is
    # the listener's own pid and cleanup can stop it
    NEWT_STORE_KEY="$who's demo store passphrase" \
        "$NEWT" --homeserver "$HS_URL" --store "$WORK/$who-store" \
        listen "$ROOM" --count "$count" --timeout "$LISTEN_TIMEOUT" \
        >"$out" 2>"$out.err" &
    LISTEN_PID=$!
    BG_PIDS+=("$LISTEN_PID")
    # give the listener time to make its first sync before messages are sent
    # (a failed listener is reported by wait_listener)
    sleep "${NEWT_DEMO_LISTEN_DELAY:-2}"
}

# wait_listener WHO OUTFILE: wait for LISTEN_PID; prints its stderr on failure.
wait_listener() {
    local who=$1 out=$2 rc=0
    wait "$LISTEN_PID" || rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "demo: $who's listener exited with status $rc:" >&2
        cat "$out.err" >&2
    fi
    return "$rc"
}

# ---------------------------------------------------------------- the conversation

say "alice and bob log in (separate encrypted stores)"
newt_as alice login --user alice --password "$ALICE_PASSWORD" --device-id ALICEDEMO
newt_as bob login --user bob --password "$BOB_PASSWORD" --device-id BOBDEMO

say "alice creates an encrypted room and invites bob"
ROOM=$(newt_as alice create-room --name "Newt demo" --invite "$BOB" | tail -n 1)
[[ $ROOM == '!'* ]] || die "create-room printed no room id (got: $ROOM)"
echo "room: $ROOM"

say "bob joins"
newt_as bob join "$ROOM"

FAILED=0

say "bob listens; alice sends two messages"
MSG1="hello bob, this is alice"
MSG2="everything here is end-to-end encrypted"
listen_bg bob 2 "$WORK/bob.jsonl"
newt_as alice send "$ROOM" "$MSG1"
newt_as alice send "$ROOM" "$MSG2"
wait_listener bob "$WORK/bob.jsonl" || FAILED=1

say "What bob received"
transcript "$WORK/bob.jsonl" "$BOB" "$MSG1" "$MSG2" || FAILED=1

say "alice listens; bob replies"
REPLY="hi alice, got both of your messages"
listen_bg alice 1 "$WORK/alice.jsonl"
newt_as bob send "$ROOM" "$REPLY"
wait_listener alice "$WORK/alice.jsonl" || FAILED=1

say "What alice received"
transcript "$WORK/alice.jsonl" "$ALICE" "$REPLY" || FAILED=1

say "alice's devices, as seen by bob"
newt_as bob devices "$ALICE" || FAILED=1

say "alice exports her room keys to a key file"
KEYS_FILE=$WORK/alice-room-keys.txt
# the passphrase is given in the environment, for this command only
if EXPORT=$(NEWT_KEY_PASSPHRASE="alice's key file passphrase" \
    newt_as alice export-keys "$KEYS_FILE" | tail -n 1); then
    SESSIONS=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["sessions"])' \
        "$EXPORT") || SESSIONS=0
    echo "alice exported $SESSIONS session(s) to $KEYS_FILE"
    # at least the session of alice's own messages and that of bob's reply
    [[ $SESSIONS -ge 2 ]] || { echo "demo: expected at least 2 sessions" >&2; FAILED=1; }
else
    echo "demo: export-keys failed" >&2
    FAILED=1
fi

say "alice sets up a key backup on the server"
# the recovery key is a secret: printed on stdout by backup-setup, kept in a variable here
# (passed on through a pipe, never an argument) and not shown
RECOVERY_KEY=
if SETUP=$(newt_as alice backup-setup | tail -n 1); then
    RECOVERY_KEY=$(printf '%s\n' "$SETUP" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["recovery_key"])') ||
        RECOVERY_KEY=
    BACKUP_VERSION=$(printf '%s\n' "$SETUP" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["version"])') ||
        BACKUP_VERSION="?"
    if [[ -n $RECOVERY_KEY ]]; then
        echo "backup version $BACKUP_VERSION; alice keeps its recovery key (not shown here)"
    else
        echo "demo: backup-setup printed no recovery key" >&2
        FAILED=1
    fi
else
    echo "demo: backup-setup failed" >&2
    FAILED=1
fi
newt_as alice backup-status || FAILED=1

if [[ -n $RECOVERY_KEY ]]; then
    say "alice logs in on a new device (a new, empty store)"
    newt_as alice-new login --user alice --password "$ALICE_PASSWORD" --device-id ALICENEW

    say "alice's new device restores her room keys from the backup"
    # the recovery key is given in the environment, for this command only
    if RECOVERED=$(NEWT_RECOVERY_KEY=$RECOVERY_KEY newt_as alice-new recover | tail -n 1); then
        echo "restore: $RECOVERED"
        IMPORTED=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["imported"])' \
            "$RECOVERED") || IMPORTED=0
        # at least the session of bob's reply, which alice's first device received
        [[ $IMPORTED -ge 1 ]] || { echo "demo: expected at least 1 session restored" >&2; FAILED=1; }
    else
        echo "demo: recover failed" >&2
        FAILED=1
    fi

    say "What alice's new device reads (received before the restore, kept, now decrypted)"
    # no waiting: the reply is in the new device's inbox since its first sync
    if newt_as alice-new listen "$ROOM" --count 1 --timeout 10 >"$WORK/alice-new.jsonl"; then
        transcript "$WORK/alice-new.jsonl" "$ALICE" "$REPLY" || FAILED=1
    else
        echo "demo: listen on alice's new device failed" >&2
        FAILED=1
    fi
fi

echo
if [[ $FAILED -ne 0 ]]; then
    echo "DEMO FAILED: a message was missing or could not be decrypted, or a step failed (see above)" >&2
    exit 1
fi
echo "Demo succeeded: every message was delivered and decrypted, the room keys exported,"
echo "backed up, and restored on alice's new device."
