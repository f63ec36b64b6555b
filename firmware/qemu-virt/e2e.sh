#!/usr/bin/env bash
# End-to-end test of rptun over ivshmem: the host (`rptun ivshmem`, master:
# the simulator server's node and shell) boots the rptun firmware (remote,
# "proxy") in QEMU and drives it through the shell:
#
#   1. boot, handshake, rpmsg link up;
#   2. rpmsg ping with ACK and data check at 17 and 1520 bytes;
#   3. rpmsg test (the firmware holds every buffer, then releases it);
#   4. random bytes from the firmware's virtio-rng (hexdump /dev/random1);
#   5. stop the firmware (STOP: it powers off, QEMU exits), start it again
#      (a new QEMU boots), ping again;
#   6. reset (the firmware restarts its link, the master re-runs the
#      handshake without rebooting QEMU), ping again;
#   7. leave the shell: STOP, clean power-off, shared-memory file removed.
#
# Everything is bounded: the whole host run by `timeout`, every wait inside
# it by the host's own timeouts. QEMU tests run one at a time (a lock shared
# with test.sh); leftover QEMU processes of this test (found by their unique
# shared-memory path) are killed by pid and the shm file is always removed.
# Prints `N passed, N failed` last; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
SHM=rptun-ivshmem-e2e-$$
ELF=$PWD/target/aarch64-unknown-none/release/rptun-fw-qemu-virt
RPTUN=$ROOT/target/debug/rptun
TMP=$(mktemp -d)

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok: $1"; }
bad() { failed=$((failed + 1)); echo "FAILED: $1"; }

cleanup() {
    # QEMU processes of this test only (the shm path is unique to this run).
    for pid in $(pgrep -f "mem-path=/dev/shm/$SHM" 2>/dev/null); do
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -f "/dev/shm/$SHM"
    rm -rf "$TMP"
}
trap cleanup EXIT

finish() {
    echo "firmware e2e test: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}

if ! command -v qemu-system-aarch64 >/dev/null 2>&1; then
    echo "FAILED: qemu-system-aarch64 not found; run scripts/install-qemu.sh first"
    exit 1
fi
rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-none \
    || rustup target add aarch64-unknown-none >/dev/null 2>&1 || true

exec 9>/tmp/rptun-qemu-tests.lock
flock -w 900 9 || { echo "FAILED: another QEMU test holds /tmp/rptun-qemu-tests.lock"; exit 1; }

# -- build -------------------------------------------------------------------
cargo build --release --quiet || { echo "FAILED: cargo build --release (firmware)"; exit 1; }
(cd "$ROOT" && cargo build -p rptun-cli --quiet) || { echo "FAILED: cargo build -p rptun-cli"; exit 1; }
./size.sh "$ELF"

# -- run ---------------------------------------------------------------------
OUT=$TMP/shell.log
UART=$TMP/uart.log
COMMANDS='rpmsg ping all 10 17 3 0
rpmsg ping all 10 1520 3 0
rpmsg test all
hexdump /dev/random1 count=64
rptun stop all
rptun dump all
rptun start all
rpmsg ping all 5 1520 3 0
rptun reset proxy 0
rpmsg ping all 5 1520 3 0
rptun dump all
ls /dev'
start=$(date +%s)
timeout -k 5 300 "$RPTUN" ivshmem --shm "$SHM" --firmware "$ELF" --uart-log "$UART" \
    --boot-timeout 60 -c "$COMMANDS" </dev/null >"$OUT" 2>&1
rc=$?
end=$(date +%s)
echo "--- shell output ---"
cat "$OUT"
echo "--- UART output ----"
cat "$UART" 2>/dev/null
echo "--------------------"
echo "host run took $((end - start)) s"

if [ "$rc" -eq 0 ]; then ok "rptun ivshmem exited with status 0"
elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then bad "rptun ivshmem hung (killed by timeout)"
else bad "rptun ivshmem exited with status $rc"; fi

# The output of the command echoed as `server> CMD`, up to the next prompt
# (the Nth time CMD was run).
section() { # section CMD N
    awk -v cmd="server> $1" -v want="$2" '
        $0 == cmd { n++; on = (n == want); next }
        /^server> / { on = 0 }
        on { print }' "$OUT"
}
check_ping() { # check_ping CMD N LEN TIMES
    local s
    s=$(section "$1" "$2")
    if grep -q "^rpmsg ping:" <<<"$s"; then bad "$1 (#$2): $(grep '^rpmsg ping:' <<<"$s" | head -1)"; return; fi
    if grep -q "^ping times: $4$" <<<"$s" && grep -q "send_len: $3$" <<<"$s" \
        && grep -q "^buffer_len: 1520," <<<"$s"; then
        ok "$1 (#$2): $4 round trips of $3 bytes with ACK and data check"
    else
        bad "$1 (#$2): no ping report for $4 x $3 bytes"
    fi
}

check_ping "rpmsg ping all 10 17 3 0" 1 17 10
check_ping "rpmsg ping all 10 1520 3 0" 1 1520 10

s=$(section "rpmsg test all" 1)
if grep -q "rpmsg test proxy: sent 8 buffers; .*released them all: PASS" <<<"$s"; then
    ok "rpmsg test: 8 buffers sent, held and all released"
else bad "rpmsg test: $s"; fi
if grep -q "rpmsg-test: released 8 held rx buffers, 0 check errors" "$UART"; then
    ok "rpmsg test: the firmware held and released 8 buffers, data intact"
else bad "rpmsg test: no release report from the firmware"; fi

s=$(section "hexdump /dev/random1 count=64" 1)
lines=$(grep -Ec '^[0-9a-f]{4}: ([0-9a-f]{2} ){16}' <<<"$s")
if [ "$lines" -eq 4 ]; then
    if [ "$(grep -Eo '([0-9a-f]{2} ){16}' <<<"$s" | sort -u | wc -l)" -gt 1 ]; then
        ok "hexdump /dev/random1: 64 random bytes from the firmware's virtio-rng"
    else bad "hexdump /dev/random1: the 64 bytes repeat one line"; fi
else bad "hexdump /dev/random1: expected 4 lines of 16 bytes, got: $s"; fi

s=$(section "rptun stop all" 1)
if grep -q "^proxy stopped$" <<<"$s"; then ok "rptun stop: ok"; else bad "rptun stop: $s"; fi
if grep -q "state stopped" <<<"$(section "rptun dump all" 1)"; then ok "stopped link reported"
else bad "rptun dump after stop: not stopped"; fi
s=$(section "rptun start all" 1)
if grep -q "proxy started; link up" <<<"$s"; then ok "rptun start: the firmware booted again"
else bad "rptun start: $s"; fi
check_ping "rpmsg ping all 5 1520 3 0" 1 1520 5
s=$(section "rptun reset proxy 0" 1)
if grep -q "proxy reset (value 0); link up again" <<<"$s"; then ok "rptun reset: ok"; else bad "rptun reset: $s"; fi
check_ping "rpmsg ping all 5 1520 3 0" 2 1520 5
if grep -q "state running" <<<"$(section "rptun dump all" 2)"; then ok "link running after reset"
else bad "rptun dump after reset: not running"; fi

s=$(section "ls /dev" 1)
if grep -qx " random1" <<<"$s" && grep -qx " rpmsg/proxy" <<<"$s"; then
    ok "ls /dev: the simulator's shell sees /dev/random1 and /dev/rpmsg/proxy"
else bad "ls /dev: $s"; fi

# Issue #11: the firmware's code size is part of `rptun bench`'s output (its
# code-size table comes from scripts/code-size.sh).
row=$(cd "$ROOT" && bash scripts/code-size.sh --no-build --tsv 2>/dev/null | grep '^qemu-virt fw')
if [ -n "$row" ] && [ "$(cut -f2 <<<"$row")" -gt 0 ] 2>/dev/null; then
    ok "code size for rptun bench: $(tr '\t' ' ' <<<"$row")"
else bad "scripts/code-size.sh reports no qemu-virt firmware row"; fi

boots=$(grep -c '^\[proxy\] rptun proxy firmware ' "$UART")
if [ "$boots" -eq 2 ]; then ok "the firmware booted twice (start, then start after stop)"
else bad "the firmware booted $boots times, expected 2"; fi
offs=$(grep -c '^\[proxy\] stopped by the master; powering off' "$UART")
if [ "$offs" -eq 2 ]; then ok "the firmware powered off cleanly twice (stop, exit)"
else bad "the firmware powered off $offs times, expected 2"; fi
if grep -q "RESET (0) requested by the master" "$UART" && [ "$(grep -c 'rptun link to server up' "$UART")" -eq 3 ]; then
    ok "reset restarted the firmware's link without a reboot"
else bad "reset: the firmware did not restart its link"; fi
if grep -Eq 'FATAL|PANIC|ERROR|WARN' "$UART"; then bad "the firmware reported a problem"
else ok "no fault, panic, error or warning from the firmware"; fi
if grep -q "the firmware did not power off" "$OUT"; then bad "QEMU had to be killed"
else ok "QEMU was never killed"; fi
if grep -q "^rptun ivshmem: done" "$OUT"; then ok "the shell left cleanly"; else bad "the shell did not finish"; fi
if pgrep -f "mem-path=/dev/shm/$SHM" >/dev/null 2>&1; then bad "a QEMU process is still running"
else ok "no QEMU process left"; fi
if [ -e "/dev/shm/$SHM" ]; then bad "/dev/shm/$SHM was not removed by the host"
else ok "shared-memory file removed by the host"; fi

finish
