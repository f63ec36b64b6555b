#!/usr/bin/env bash
# Runs the single-process tests of the core crate (lib unit tests and
# integration tests of crates/rptun) under Miri, which reports undefined
# behaviour in the shared-memory seam (crates/rptun/src/shm/) and everything
# built on it: out-of-bounds or misaligned accesses, data races between the
# threads that stand in for two cores, use after free of heap regions.
#
# Needs a nightly toolchain with the miri and rust-src components; prints one
# "skipped: ..." line and exits 0 when they cannot be installed. Tests too
# slow to interpret are marked #[cfg_attr(miri, ignore = "reason")] or
# shrink their loops under cfg(miri); PROPTEST_CASES (default 8) keeps property tests
# short. Target: under ~8 minutes on 2 cores.
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
export PROPTEST_CASES="${MIRI_PROPTEST_CASES:-8}"
# Isolation off: tests read test vectors from disk and use the clock for
# hang guards (never for assertions).
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-disable-isolation}"

start=$(date +%s)
# --tests: the library's unit tests and every integration test (no doctests).
cargo +nightly miri test -p rptun --tests "$@"
echo "miri: rptun lib + integration tests passed in $(( $(date +%s) - start )) s"
