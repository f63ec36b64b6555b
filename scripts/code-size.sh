#!/usr/bin/env bash
# Code size of rptun on a Cortex-M4F (thumbv7em-none-eabihf): builds the
# no_std examples in examples/size-*/ (opt-level "z", fat LTO, panic=abort)
# and prints the .text, .rodata, .data and .bss of each linked image; then the
# same for the QEMU aarch64 firmware (firmware/qemu-virt, opt-level "s", its
# .bss holds a 1 MiB heap arena), measured by its size.sh.
#
#   scripts/code-size.sh                 build and print a table
#   scripts/code-size.sh --no-build      only measure images already built
#   scripts/code-size.sh --tsv           tab-separated output (for rptun bench)
#
# The size tool is the first found of: arm-none-eabi-size (Debian's
# binutils-arm-none-eabi), llvm-size / llvm-size-NN (Debian's llvm), rust-size
# (`cargo install cargo-binutils` + `rustup component add llvm-tools`), or
# llvm-size from the rustup toolchain's llvm-tools. Without one, or without
# the target, it prints a `skipped:` line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
tsv=0
for a in "$@"; do
    case "$a" in
    --no-build) build=0 ;;
    --tsv) tsv=1 ;;
    -h | --help)
        sed -n '2,15p' "$0"
        exit 0
        ;;
    *)
        echo "code-size.sh: unknown option $a (see --help)" >&2
        exit 2
        ;;
    esac
done

target=thumbv7em-none-eabihf
examples=(size-rpmsg size-rng)

find_size_tool() {
    local t
    for t in arm-none-eabi-size llvm-size rust-size; do
        if command -v "$t" >/dev/null 2>&1; then
            echo "$t"
            return
        fi
    done
    t=$(compgen -c llvm-size- 2>/dev/null | sort -V | tail -1 || true)
    if [ -n "$t" ]; then
        echo "$t"
        return
    fi
    local sysroot
    if sysroot=$(rustc --print sysroot 2>/dev/null); then
        t=$(find "$sysroot/lib/rustlib" -name llvm-size -type f 2>/dev/null | head -1)
        if [ -n "$t" ]; then
            echo "$t"
            return
        fi
    fi
}

tool=$(find_size_tool)
if [ -z "$tool" ]; then
    # The examples need one; the firmware row below does not (python3).
    echo "skipped: no size tool for the thumbv7em examples (install binutils-arm-none-eabi or llvm, or cargo-binutils with llvm-tools)"
    examples=()
fi

if [ "$build" = 1 ] && [ "${#examples[@]}" -gt 0 ]; then
    if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
        if ! rustup target add "$target" >/dev/null 2>&1; then
            echo "skipped: the $target target is not installed and rustup could not add it"
            exit 0
        fi
    fi
    for ex in "${examples[@]}"; do
        (cd "examples/$ex" && cargo build --release --locked -q)
    done
fi

# Sizes of the four sections, from `size -A` (Berkeley-style tools print
# "section size addr" lines in System V mode).
sections() {
    "$tool" -A "$1" | awk '
        $1 == ".text"   { t = $2 }
        $1 == ".rodata" { r = $2 }
        $1 == ".data"   { d = $2 }
        $1 == ".bss"    { b = $2 }
        END { printf "%d\t%d\t%d\t%d\n", t, r, d, b }'
}

rows=()
for ex in ${examples[@]+"${examples[@]}"}; do
    elf="examples/$ex/target/$target/release/$ex"
    if [ ! -f "$elf" ]; then
        echo "skipped: $ex is not built (run scripts/code-size.sh without --no-build)"
        continue
    fi
    rows+=("$ex	$(sections "$elf")")
done

# The QEMU aarch64 firmware (issue #11): built when its target is installed.
fw=firmware/qemu-virt/target/aarch64-unknown-none/release/rptun-fw-qemu-virt
if [ "$build" = 1 ] && rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-none; then
    (cd firmware/qemu-virt && cargo build --release -q) || true
fi
if [ ! -f "$fw" ]; then
    echo "skipped: the qemu-virt firmware is not built (cd firmware/qemu-virt && cargo build --release)"
elif fwsize=$(bash firmware/qemu-virt/size.sh --tsv "$PWD/$fw" 2>/dev/null); then
    rows+=("qemu-virt fw (aarch64)	$fwsize")
else
    echo "skipped: qemu-virt firmware size (firmware/qemu-virt/size.sh needs python3)"
fi
[ "${#rows[@]}" -gt 0 ] || exit 0

if [ "$tsv" = 1 ]; then
    printf 'example\ttext\trodata\tdata\tbss\n'
    printf '%s\n' "${rows[@]}"
    exit 0
fi
echo "rptun code size, $target, opt-level z, fat LTO, panic=abort (${tool:+$(basename "$tool")})"
printf '%-22s %8s %8s %8s %8s %8s\n' example .text .rodata .data .bss flash
for r in "${rows[@]}"; do
    IFS=$'\t' read -r name t ro d b <<<"$r"
    printf '%-22s %8d %8d %8d %8d %8d\n' "$name" "$t" "$ro" "$d" "$b" $((t + ro + d))
done
echo "flash = .text + .rodata + .data; size-rpmsg's .bss is its 16 KiB example heap;"
echo "qemu-virt fw is the aarch64 firmware (opt-level s), its .bss holds a 1 MiB heap arena"
