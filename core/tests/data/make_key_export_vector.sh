#!/usr/bin/env bash
# Writes key_export_openssl.txt: a key export made without Newt's code, to check that Newt
# reads what another implementation writes. PBKDF2-HMAC-SHA-512 by Python's hashlib,
# AES-256-CTR and HMAC-SHA-256 by the openssl command, the layout from the Matrix spec
# ("Key exports"). Fixed salt and IV, so the output is the same on every run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PASS='newt export test'
SALT=000102030405060708090a0b0c0d0e0f
IV=1112131415161718000000000000aa00   # bit 63 clear
ROUNDS=1000
JSON='[{"algorithm":"m.megolm.v1.aes-sha2","room_id":"!vector:example.org","sender_key":"vectorcurve","session_id":"vector-session","session_key":"vector-secret","sender_claimed_keys":{"ed25519":"vectored"},"forwarding_curve25519_key_chain":[]}]'
KEYS=$(python3 -c "import hashlib,sys; print(hashlib.pbkdf2_hmac('sha512', sys.argv[1].encode(), bytes.fromhex(sys.argv[2]), int(sys.argv[3]), 64).hex())" "$PASS" "$SALT" "$ROUNDS")
AES=${KEYS:0:64}
MACKEY=${KEYS:64:64}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
printf '%s' "$JSON" | openssl enc -aes-256-ctr -K "$AES" -iv "$IV" -nosalt > "$TMP/ct"
{ printf '\x01'; echo -n "$SALT$IV" | xxd -r -p; printf '%08x' "$ROUNDS" | xxd -r -p; cat "$TMP/ct"; } > "$TMP/signed"
openssl dgst -sha256 -mac HMAC -macopt "hexkey:$MACKEY" -binary "$TMP/signed" > "$TMP/mac"
{
    echo "-----BEGIN MEGOLM SESSION DATA-----"
    cat "$TMP/signed" "$TMP/mac" | base64 -w 96
    echo "-----END MEGOLM SESSION DATA-----"
} > key_export_openssl.txt
echo "wrote $(pwd)/key_export_openssl.txt"
