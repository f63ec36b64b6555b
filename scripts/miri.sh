#!/usr/bin/env bash
# Runs the single-process tests of the core crate under Miri, which reports
# undefined behaviour in the shared-memory seam (crates/rptun/src/shm/, the
# only unsafe code) and everything built on it: out-of-bounds or misaligned
# accesses, data races between the threads that stand in for two cores, use
# after free of heap regions.
#
# What runs (CI budget about 6 minutes on 2 cores): the library's unit tests
# (every module: seam, queues, MMIO, remoteproc, rpmsg bus and port) and the
# integration tests listed in MIRI_TESTS below. The integration tests left
# out (hostile_peer, devices_console, devices_notify, devices_rng, the other
# rpmsg_virtio_*, rpmsg_port, fault_injection, remoteproc, rsc_proptest)
# drive the same code with many more messages or rounds and take from
# minutes to tens of minutes under Miri; MIRI_ALL=1 runs
# every test target (and so does `cargo +nightly miri test -p rptun --tests`).
# Tests too slow to interpret are marked #[cfg_attr(miri, ignore = "reason")]
# (pure safe-code logic only) or shrink their loops under cfg(miri); see
# docs/RELIABILITY.md (Miri).
#
# Needs a nightly toolchain with the miri and rust-src components; prints one
# "skipped: Miri (...)" line and exits 0 when they cannot be installed.
# Extra arguments go to cargo (e.g. --no-fail-fast).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "skipped: Miri (no nightly toolchain; install one with 'rustup toolchain install nightly')"
    exit 0
fi
if ! rustup component add --toolchain nightly miri rust-src >/dev/null 2>&1; then
    echo "skipped: Miri (rustup could not add the miri/rust-src components to the nightly toolchain)"
    exit 0
fi

# (MIRI_PROPTEST_CASES, not PROPTEST_CASES, so that a large global setting for
# the native test run does not leak in.)
export PROPTEST_CASES="${MIRI_PROPTEST_CASES:-4}"
# Isolation off: tests read test vectors from disk and use the clock for
# hang guards (never for assertions).
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-disable-isolation}"
# Fewer messages in the fault-injection tests when MIRI_ALL=1 runs them.
export RPTUN_FAULT_MESSAGES="${RPTUN_FAULT_MESSAGES:-40}"

MIRI_TESTS="${MIRI_TESTS:-virtqueue_hostile virtqueue_threads virtqueue_roundtrip virtqueue_layout
    virtqueue_notify virtqueue_snapshot rsc rpmsg_config
    rpmsg_virtio_lifecycle}"

start=$(date +%s)
cargo +nightly miri setup >/dev/null 2>&1 || true
if [ "${MIRI_ALL:-0}" = 1 ]; then
    cargo +nightly miri test -p rptun --tests "$@"
    what="lib + every integration test"
else
    args=(--lib)
    for t in $MIRI_TESTS; do
        args+=(--test "$t")
    done
    cargo +nightly miri test -p rptun "${args[@]}" "$@"
    what="lib + $(echo $MIRI_TESTS | wc -w) integration test files"
fi
echo "miri: rptun $what passed in $(( $(date +%s) - start )) s"
