#!/usr/bin/env bash
# Prints the code size of the rptun firmware image: .text, .rodata, .data and
# .bss as linked (without the page padding the linker script adds between
# sections), the heap arena inside .bss, and the stacks.
#
#   ./size.sh            # builds the release image first
#   ./size.sh ELF        # an image that is already built
#   ./size.sh --tsv ELF  # one line: text, rodata, data, bss (tab-separated;
#                        # scripts/code-size.sh, and so `rptun bench`, use it)
set -euo pipefail
TSV=0
if [ "${1:-}" = "--tsv" ]; then
    TSV=1
    shift
fi
cd "$(dirname "$0")"
ELF=${1:-}
if [ -z "$ELF" ]; then
    cargo build --release --quiet
    ELF=target/aarch64-unknown-none/release/rptun-fw-qemu-virt
fi
[ -f "$ELF" ] || { echo "size.sh: $ELF not found; build with cargo build --release" >&2; exit 1; }
python3 - "$ELF" "$TSV" <<'PY'
import struct, sys

data = open(sys.argv[1], "rb").read()
if data[:4] != b"\x7fELF" or data[4] != 2:
    sys.exit("size.sh: not a 64-bit ELF file")
shoff, = struct.unpack_from("<Q", data, 0x28)
shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
secs = []
for i in range(shnum):
    name, typ, flags, addr, off, size, link, info, align, entsize = struct.unpack_from(
        "<IIQQQQIIQQ", data, shoff + i * shentsize)
    secs.append((name, typ, addr, off, size, link, entsize))
stroff = secs[shstrndx][3]
def cstr(base, i):
    end = data.index(b"\0", base + i)
    return data[base + i:end].decode()
named = {cstr(stroff, s[0]): s for s in secs}
syms = {}
symtab = named.get(".symtab")
if symtab:
    strtab = secs[symtab[5]]
    for k in range(symtab[4] // 24):
        st_name, st_info, st_other, st_shndx, st_value, st_size = struct.unpack_from(
            "<IBBHQQ", data, symtab[3] + k * 24)
        if st_name:
            syms[cstr(strtab[3], st_name)] = (st_value, st_size)
def sec(n):
    return named[n][4] if n in named else 0
def used(start_sym, end_sym, fallback):
    if start_sym in syms and end_sym in syms:
        return syms[end_sym][0] - syms[start_sym][0]
    return fallback
text = used("__text_start", "__text_content_end", sec(".text"))
rodata = used("__rodata_start", "__rodata_content_end", sec(".rodata"))
data_ = sec(".data")
bss = sec(".bss")
heap = next((v[1] for k, v in syms.items() if "ARENA" in k), 0)
stacks = sec(".stacks")
if sys.argv[2] == "1":
    print(f"{text}\t{rodata}\t{data_}\t{bss}")
    sys.exit(0)
print(f"firmware image {sys.argv[1]}")
print(f"  .text   {text:>9} B  code")
print(f"  .rodata {rodata:>9} B  constants")
print(f"  .data   {data_:>9} B  initialised statics")
print(f"  .bss    {bss:>9} B  zeroed statics, of which {heap} B heap arena and {bss - heap} B page tables and other statics")
print(f"  stacks  {stacks:>9} B  main + exception stacks and their guard pages")
print(f"  flash-equivalent (text + rodata + data): {text + rodata + data_} B")
PY
