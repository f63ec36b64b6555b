#!/usr/bin/env bash
# Boot test of the rptun firmware on QEMU virt (Cortex-A53) with an
# ivshmem-plain device backed by a host file.
#
#  1. builds the firmware's bring-up demo (release, feature `demo`: a few
#     words exchanged with the host instead of rptun; the rptun firmware
#     itself is tested end to end by e2e.sh), and a copy with the fault
#     self-test;
#  2. creates a 4 MiB shared-memory file and writes the host's words into it;
#  3. boots QEMU (bounded by `timeout`), checks the UART output: banner,
#     ivshmem BAR2 address, the host's magic and counter as the firmware read
#     them, no fault, clean power-off;
#  4. checks the firmware's words landed in the file (magic, counter of 1000
#     atomic increments, host counter + 1);
#  5. boots the fault self-test and checks the exception is reported and the
#     machine powers off instead of hanging.
#
# Needs qemu-system-aarch64 (scripts/install-qemu.sh) and the
# aarch64-unknown-none Rust target (added here when rustup can).
# Exits non-zero on any failure; always removes the shared-memory file.
set -uo pipefail
cd "$(dirname "$0")"

SHM=/dev/shm/rptun-ivshmem-test
ELF=target/aarch64-unknown-none/release/rptun-fw-qemu-virt
HOST_MAGIC=0x484f5354
HOST_COUNTER=41
FW_MAGIC=0x50525859
FW_COUNT=1000
TMP=$(mktemp -d)
trap 'rm -f "$SHM"; rm -rf "$TMP"' EXIT
# QEMU tests run one at a time (this and e2e.sh share the lock).
exec 9>/tmp/rptun-qemu-tests.lock
flock -w 900 9 || { echo "FAILED: another QEMU test holds /tmp/rptun-qemu-tests.lock"; exit 1; }

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok: $1"; }
bad() { failed=$((failed + 1)); echo "FAILED: $1"; }
check() { # check DESCRIPTION FILE REGEX
    if grep -Eq -- "$3" "$2"; then ok "$1"; else bad "$1 (no line matching /$3/ in the UART output)"; fi
}
finish() {
    echo "firmware boot test: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}

if ! command -v qemu-system-aarch64 >/dev/null 2>&1; then
    echo "FAILED: qemu-system-aarch64 not found; run scripts/install-qemu.sh first"
    exit 1
fi
rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-none \
    || rustup target add aarch64-unknown-none >/dev/null 2>&1 || true

qemu() { # qemu LOG ELF [extra args...]: boots, bounded, no stdin
    local log=$1 elf=$2
    shift 2
    timeout -k 5 60 qemu-system-aarch64 -M virt,highmem=off -cpu cortex-a53 -nographic \
        -nic none -m 128M -kernel "$elf" "$@" </dev/null >"$log" 2>&1
}

# -- build -------------------------------------------------------------------
if ! cargo build --release --features demo,fault-selftest --quiet; then
    echo "FAILED: cargo build --release --features demo,fault-selftest"
    exit 1
fi
cp "$ELF" "$TMP/fault.elf"
if ! cargo build --release --features demo --quiet; then
    echo "FAILED: cargo build --release --features demo"
    exit 1
fi
cp "$ELF" "$TMP/fw.elf"
# Leave the rptun image (what `rptun ivshmem` boots by default) in place.
cargo build --release --quiet || { echo "FAILED: cargo build --release"; exit 1; }

# -- host side: shared memory with the host's words -------------------------
rm -f "$SHM"
python3 - "$SHM" "$HOST_MAGIC" "$HOST_COUNTER" <<'PY' || { echo "FAILED: cannot create $SHM"; exit 1; }
import struct, sys
path, magic, counter = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3], 0)
with open(path, "wb") as f:
    f.truncate(4 << 20)
    f.seek(0x40)
    f.write(struct.pack("<II", magic, counter))
PY

# -- boot ------------------------------------------------------------------
LOG=$TMP/uart.log
qemu "$LOG" "$TMP/fw.elf" \
    -object memory-backend-file,id=shm,share=on,mem-path="$SHM",size=4M \
    -device ivshmem-plain,memdev=shm
rc=$?
echo "--- UART output ---"
cat "$LOG"
echo "-------------------"
if [ "$rc" -eq 0 ]; then ok "QEMU powered off with status 0"
elif [ "$rc" -eq 124 ]; then bad "QEMU did not power off within 60 s (killed by timeout)"
else bad "QEMU exited with status $rc"; fi
check "banner" "$LOG" '^\[proxy\] rptun proxy firmware '
check "ivshmem BAR2 placed in the PCI MMIO window" "$LOG" \
    '^\[proxy\] ivshmem 00:01\.0 BAR2 at 0x(1|2|3)[0-9a-f]{7} size 0x400000 \(64-bit, prefetchable\)'
check "firmware read the host's magic and counter" "$LOG" \
    "^\[proxy\] host magic $(printf '0x%08x' "$HOST_MAGIC") counter $HOST_COUNTER"
check "demo finished" "$LOG" '^\[proxy\] demo done, powering off'
if grep -Eq 'FATAL|PANIC|ERROR|WARN' "$LOG"; then bad "the firmware reported a problem"; else ok "no fault, panic, error or warning"; fi

# -- the firmware's words in the file --------------------------------------
words=$(python3 - "$SHM" <<'PY'
import struct, sys
with open(sys.argv[1], "rb") as f:
    print(" ".join(str(w) for w in struct.unpack("<III", f.read(12))))
PY
)
read -r fw_magic fw_counter fw_echo <<<"$words"
if [ "${fw_magic:-}" = "$((FW_MAGIC))" ]; then ok "firmware magic in the shared file"
else bad "firmware magic in the shared file: got ${fw_magic:-nothing}, want $((FW_MAGIC))"; fi
if [ "${fw_counter:-}" = "$FW_COUNT" ]; then ok "firmware counter ($FW_COUNT atomic increments)"
else bad "firmware counter: got ${fw_counter:-nothing}, want $FW_COUNT"; fi
if [ "${fw_echo:-}" = "$((HOST_COUNTER + 1))" ]; then ok "firmware echoed host counter + 1"
else bad "firmware echo: got ${fw_echo:-nothing}, want $((HOST_COUNTER + 1))"; fi

# -- fault self-test: an exception is reported, then power-off ---------------
FLOG=$TMP/fault.log
qemu "$FLOG" "$TMP/fault.elf"
rc=$?
if [ "$rc" -eq 0 ]; then ok "fault self-test: QEMU powered off with status 0"
else bad "fault self-test: QEMU exit status $rc (124: hung until timeout)"; cat "$FLOG"; fi
check "fault self-test: exception reported" "$FLOG" \
    '^\[proxy\] FATAL: synchronous exception .*EC=0x25 \(data abort\).*FAR=0x0000000008000000'
check "fault self-test: cause decoded" "$FLOG" '^\[proxy\] FATAL: translation fault .* on read of 0x8000000'

finish
