#!/usr/bin/env python3
"""Regenerates the format-derived seed files of fuzz/corpus/.

Seeds come from the NuttX simulator snapshot
crates/rptun/tests/vectors/after-boot.bin (its resource table, packed
without the 64 KiB carveout memory embedded between entries, and its rpmsg
config space) and from the formats in DESIGN.md (OpenAMP demo table, tiny
ELF32/ELF64 firmware images carrying that table). Run from the repository
root: python3 fuzz/gen_seeds.py
"""
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
SNAPSHOT = os.path.join(ROOT, "crates", "rptun", "tests", "vectors", "after-boot.bin")
TABLE_AT = 0x18  # the resource table's offset in the simulator's shm object


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def entry_size(t, o):
    ty = struct.unpack_from("<I", t, o)[0]
    if ty in (0, 1):
        return 56
    if ty == 2:
        return 48
    if ty == 3:
        config_len = struct.unpack_from("<I", t, o + 20)[0]
        nvrings = t[o + 25]
        return 28 + 20 * nvrings + config_len
    raise ValueError("unexpected entry type %d" % ty)


def snapshot_entries():
    shm = open(SNAPSHOT, "rb").read()
    t = shm[TABLE_AT:]
    _ver, num, _r0, _r1 = struct.unpack_from("<4I", t, 0)
    offs = struct.unpack_from("<%dI" % num, t, 16)
    entries = [t[o:o + entry_size(t, o)] for o in offs]
    return shm, t, offs, entries


def pack(entries, reserved=(0, 0), gap=b""):
    """A table of `entries` packed in order, `gap` bytes after each."""
    num = len(entries)
    out = bytearray(struct.pack("<4I", 1, num, *reserved))
    out += b"\0" * (4 * num)
    for i, e in enumerate(entries):
        struct.pack_into("<I", out, 16 + 4 * i, len(out))
        out += e + gap
    return bytes(out)


def carveout(ty, da, pa, length, name):
    return struct.pack("<6I32s", ty, da, pa, length, 0, 0, name)


def vdev(vid, notifyid, dfeat, gfeat, status, rings, config=b"", reserved=b"\0\0"):
    head = struct.pack("<6IBB2s", 3, vid, notifyid, dfeat, gfeat, len(config), status,
                       len(rings), reserved)
    return head + b"".join(struct.pack("<5I", *r) for r in rings) + config


def elf(is64, segments, sections, entry):
    """segments: (p_type, vaddr, paddr, data, memsz); sections: (name, type,
    flags, addr, data)."""
    ehsize, phentsize, shentsize = (64, 56, 64) if is64 else (52, 32, 40)
    off = ehsize + phentsize * len(segments)
    seg_offs = []
    for s in segments:
        seg_offs.append(off)
        off += len(s[3])
    sect_offs = []
    for s in sections:
        sect_offs.append(off)
        off += len(s[4])
    strtab = b"\0"
    name_offs = []
    for s in sections:
        name_offs.append(len(strtab))
        strtab += s[0] + b"\0"
    shstr_name = len(strtab)
    strtab += b".shstrtab\0"
    strtab_off = off
    off += len(strtab)
    shoff = off
    shnum = len(sections) + 2
    word = "Q" if is64 else "I"
    out = bytearray(b"\x7fELF" + bytes([2 if is64 else 1, 1, 1]) + b"\0" * 9)
    out += struct.pack("<HHI" + word * 3 + "IHHHHHH", 2, 40, 1, entry, ehsize, shoff, 0,
                       ehsize, phentsize, len(segments), shentsize, shnum, shnum - 1)
    for (p_type, vaddr, paddr, data, memsz), o in zip(segments, seg_offs):
        if is64:
            out += struct.pack("<IIQQQQQQ", p_type, 7, o, vaddr, paddr, len(data), memsz, 4)
        else:
            out += struct.pack("<IIIIIIII", p_type, o, vaddr, paddr, len(data), memsz, 7, 4)
    for s in segments:
        out += s[3]
    for s in sections:
        out += s[4]
    out += strtab
    shdr = ("<IIQQQQIIQQ" if is64 else "<IIIIIIIIII")
    out += b"\0" * shentsize
    for (name, sh_type, flags, addr, data), o, n in zip(sections, sect_offs, name_offs):
        out += struct.pack(shdr, n, sh_type, flags, addr, o, len(data), 0, 0, 4, 0)
    out += struct.pack(shdr, shstr_name, 3, 0, 0, strtab_off, len(strtab), 0, 0, 1, 0)
    return bytes(out)


def crc16_arc(data):
    crc = 0
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def port_wire(msg, crc):
    """An rpmsg message (header + payload) as an rpmsg-port UART frame."""
    frame = bytearray(struct.pack("<4H", 0, 0, 0, 8 + len(msg)) + msg)
    if crc:
        struct.pack_into("<H", frame, 0, crc16_arc(frame[2:]))
    out = bytearray([0x7f])
    for b in frame:
        if 0x70 <= b <= 0x7f:
            out += bytes([0x7c, b ^ 0x20])
        else:
            out.append(b)
    out.append(0x70)
    return bytes(out)


def snapshot_messages(shm, table, offs):
    """The rpmsg messages left in the rpmsg vdev's buffers, found through the
    table and the descriptors (nothing hard-coded but the header layout)."""
    base = struct.unpack_from("<Q", shm, 0)[0]
    msgs = []
    for o in offs:
        if struct.unpack_from("<2I", table, o) != (3, 7):  # rpmsg vdev
            continue
        for r in range(table[o + 25]):
            da, _align, num = struct.unpack_from("<3I", table, o + 28 + 20 * r)
            for i in range(num):
                addr, length = struct.unpack_from("<QI", shm, da + 16 * i)
                at = addr - base
                hdr_len = struct.unpack_from("<H", shm, at + 12)[0]
                if 16 + hdr_len <= length:
                    msgs.append(shm[at:at + 16 + hdr_len])
    return msgs


def main():
    shm, table, offs, entries = snapshot_entries()

    # --- rsc_parse -------------------------------------------------------
    nuttx = pack(entries)
    write("rsc_parse", "nuttx-sim-packed", nuttx)
    # the snapshot's first vdev + carveout with a slice of the embedded memory
    write("rsc_parse", "nuttx-sim-gap", pack(entries[:2], gap=b"\0" * 64))
    # mailbox command pending (only the relaxed parse accepts it)
    write("rsc_parse", "nuttx-sim-cmd", pack(entries[4:], reserved=(0x00040000, 0xffff0003)))
    openamp = pack([vdev(7, 0, 1, 0, 0, [(0x4000, 0x1000, 256, 0, 0),
                                          (0x8000, 0x1000, 256, 1, 0)])])
    write("rsc_parse", "openamp-demo", openamp)
    write("rsc_parse", "all-types", pack([
        carveout(0, 0xFFFFFFFF, 0xFFFFFFFF, 0x10000, b"shm"),
        carveout(1, 0x10000000, 0x10000000, 0x1000, b"uart"),
        struct.pack("<4I32s", 2, 0x20000, 0x400, 0, b"trace0"),
        struct.pack("<I", 200) + b"vendor body",
        vdev(4, 0xFFFFFFFF, 0, 0, 0, [(0, 8, 8, 0xFFFFFFFF, 0)]),
        struct.pack("<I", 77) + b"unknown",
    ]))
    write("rsc_parse", "empty", pack([]))

    # --- rpmsg_config ----------------------------------------------------
    rpmsg_vdev_off = offs[4]
    config_at = TABLE_AT + rpmsg_vdev_off + 28 + 2 * 20
    config = shm[config_at:config_at + 64]
    write("rpmsg_config", "nuttx-sim-current", config)
    legacy = bytearray(64)
    legacy[0:8] = config[0:8]
    legacy[8:16] = config[24:32]
    legacy[16:24] = config[32:40]
    write("rpmsg_config", "nuttx-legacy", bytes(legacy))
    with_addrs = bytearray(config)
    struct.pack_into("<QQ", with_addrs, 8, 0x201cc + 0x1000, 0x201cc + 0x4000)
    write("rpmsg_config", "with-addresses", bytes(with_addrs))

    # --- port_deframer --------------------------------------------------
    msgs = snapshot_messages(shm, table, offs)
    assert len(msgs) == 16, len(msgs)
    connreq, connack, staywake1, staywakeack1 = b"\x7e", b"\x7d", b"\x79", b"\x78"
    stream = connreq + connack
    for k, m in enumerate(msgs[:8]):
        stream += port_wire(m, crc=k % 2 == 1)
    write("port_deframer", "nuttx-sim-ns-traffic", stream)
    # a command inside a frame, a truncated frame, garbage between frames
    w = port_wire(msgs[8], crc=True)
    write("port_deframer", "mixed", staywake1 + w[:10] + staywakeack1 + w[10:] + b"\x00\x01"
          + port_wire(msgs[9], crc=False)[:20] + port_wire(msgs[10], crc=True))

    # --- elf_load --------------------------------------------------------
    # A resource table linked into the loaded image, as firmware does.
    rsc = pack([vdev(7, 0, 0xf, 0, 0, [(0xFFFFFFFF, 8, 8, 1, 0), (0xFFFFFFFF, 8, 8, 2, 0)],
                     config), carveout(0, 0xFFFFFFFF, 0xFFFFFFFF, 0x1000, b"rpmsg0_shm")])
    code = bytes(range(64))
    for base, tag in ((0, "low"), (0x40000000, "high"), (0x10000000, "da")):
        for is64 in (False, True):
            segs = [(1, base, base, code + rsc, len(code) + len(rsc) + 0x100),
                    (1, base + 0x2000, base + 0x2000, b"data", 0x800)]
            sects = [(b".text", 1, 6, base, code),
                     (b".resource_table", 1, 2, base + len(code), rsc)]
            name = "elf%d-%s" % (64 if is64 else 32, tag)
            write("elf_load", name, elf(is64, segs, sects, base))
    # vaddr differs from paddr; no resource table
    write("elf_load", "elf32-vaddr",
          elf(False, [(1, 0x40000000, 0, code, 0x100)], [(b".text", 1, 6, 0, code)], 0))


if __name__ == "__main__":
    main()
