#!/usr/bin/env bash
# Checks that `cargo build -p newt-ffi` resolves every shared dependency with the same
# features as the workspace's test build (`cargo nextest run --workspace`). If they differ,
# the Kotlin/Swift/AAR scripts rebuild most dependencies a second time (minutes on CI).
#
#   scripts/feature-parity.sh
#
# Prints the crates whose features differ and exits 1, or prints "features match" and exits
# 0. Fix a difference by asking for the missing feature in bindings/Cargo.toml (see the
# comment there). Needs only cargo (cargo tree, no build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

features() { cargo tree "$@" -e features --prefix none --locked | grep ' feature "' | sed 's/ (\*)//' | sort -u; }

ffi=$(features -p newt-ffi -e normal,build)
workspace=$(features --workspace -e normal,build,dev)

python3 - "$ffi" "$workspace" <<'PY'
import sys

def parse(text):
    out = {}
    for line in text.splitlines():
        name, _, feature = line.partition(' feature "')
        out.setdefault(name, set()).add(feature.rstrip('"'))
    return out

ffi, workspace = parse(sys.argv[1]), parse(sys.argv[2])
# Crates both builds compile (the workspace's own packages differ by design: command-line).
shared = sorted(n for n in ffi.keys() & workspace.keys() if not n.startswith("newt-"))
drift = [(n, sorted(workspace[n] - ffi[n]), sorted(ffi[n] - workspace[n]))
         for n in shared if ffi[n] != workspace[n]]
for name, only_ws, only_ffi in drift:
    print(f"{name}: only in the workspace build: {only_ws}; only in newt-ffi: {only_ffi}")
if drift:
    print(f"{len(drift)} crate(s) differ: cargo build -p newt-ffi would rebuild them and their dependents")
    sys.exit(1)
print(f"features match ({len(shared)} shared crates)")
PY
