#!/usr/bin/env bash
# Builds every cargo-fuzz target of fuzz/ and runs each one briefly from its
# committed seed corpus (fuzz/corpus/<target>/); fails when a target finds a
# crash (a panic, an assertion of an API promise, or a sanitizer report).
#
# Needs a nightly toolchain, a C++ compiler (libFuzzer is built from source)
# and cargo-fuzz (installed with `cargo install cargo-fuzz --locked` when
# missing). Without them it prints one "skipped: fuzzing (...)" line and
# exits 0.
#
# Knobs: FUZZ_SECONDS (per target, default 10), FUZZ_RUNS (per target,
# default 50000; whichever limit comes first), FUZZ_TARGETS (space-separated
# subset), FUZZ_INSTALL_TIMEOUT (seconds, default 240). New inputs go to a
# temporary directory, never into the committed corpus; crash inputs are
# kept in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
    echo "skipped: fuzzing ($1)"
    exit 0
}

rustup run nightly rustc --version >/dev/null 2>&1 \
    || skip "no nightly toolchain; install one with 'rustup toolchain install nightly'"
command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 \
    || command -v clang++ >/dev/null 2>&1 \
    || skip "no C++ compiler to build libFuzzer"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    # Bounded: a slow or offline registry must not hold CI up.
    limit="${FUZZ_INSTALL_TIMEOUT:-240}"
    echo "fuzz: installing cargo-fuzz (at most ${limit} s) ..."
    timeout "$limit" cargo install cargo-fuzz --locked >/dev/null 2>&1 \
        || skip "cargo-fuzz is not installed and 'cargo install cargo-fuzz --locked' failed or took over ${limit} s"
    cargo +nightly fuzz --version >/dev/null 2>&1 \
        || skip "cargo-fuzz was installed but 'cargo +nightly fuzz' does not run"
fi

seconds="${FUZZ_SECONDS:-10}"
runs="${FUZZ_RUNS:-50000}"
cd fuzz
targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
[ -n "$targets" ] || { echo "fuzz: no targets found" >&2; exit 1; }

start=$(date +%s)
echo "fuzz: building $(echo $targets | wc -w) targets"
cargo +nightly fuzz build

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in $targets; do
    mkdir -p "$work/$t" "corpus/$t"
    log="$work/$t.log"
    if cargo +nightly fuzz run "$t" "$work/$t" "corpus/$t" -- \
        -runs="$runs" -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        echo "fuzz: $t ok (${execs:-?} executions)"
    else
        echo "fuzz: $t FAILED; log tail:"
        tail -n 40 "$log"
        failed+=("$t")
    fi
done
echo "fuzz: done in $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes in: ${failed[*]} (inputs in fuzz/artifacts/<target>/;" \
        "reproduce with: cd fuzz && cargo +nightly fuzz run <target> <input>)" >&2
    exit 1
fi
