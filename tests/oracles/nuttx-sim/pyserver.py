#!/usr/bin/env python3
"""A NuttX-like MASTER (`sim:rpserver`) for the NuttX simulator's
shared-memory contract, written from its byte-level description only
(DESIGN.md §3, §4, §5, §7 and the decoded NuttX snapshots), with the Python
standard library.

It creates /dev/shm/<name> (197072 bytes), clears the table area and writes
NuttX's six-entry table at 0x18 (notify ids ANY, vring da 0) and `base` (an
arbitrary page-aligned 32-bit value, 0xf3d5c000 by default, as in the
snapshot: descriptor addresses are base + offset), runs the master boot
handshake, assigns notify ids (vdev then its vrings, 0..6) before
`bootm = OK` and, as the refactored NuttX does, each vdev's vring addresses
(from the front of its carveout, NuttX's stride) only after `bootm = OK`,
when it creates that vdev (`--early-vrings`: all of them before, as NuttX
did before the refactor), and acts as the virtio DRIVER of all three
vdevs: the rpmsg vdev gets its 8 RX buffers of 0x600 on vring0 before the
status byte becomes exactly 4 (DRIVER_OK); TX buffers come from the same
carveout. It then
  - binds the proxy's `rpmsg-ping` (CREATE_ACK back on its CREATE; it also
    announces its own, as NuttX does, and binds on a CREATE_ACK),
  - sends N pings (cmd 3: ack + data check) of each size (17 and 1520 bytes
    by default) and verifies every echo (cmd 0x20, length, cookie, data),
  - asks each entropy vdev for 1024 bytes (one device-writable descriptor)
    and checks they arrive and differ,
  - writes STOP into `cmd_master`, unlinks the object (as NuttX does after a
    clean stop) and exits 0 when every check passed (1 otherwise, 2 on
    timeout).
Doorbells are NuttX's: it only increments `seqm` and polls `seqs` every tick
(10 ms). Every line it prints starts with "pyserver: "; the last is the
summary.

  pyserver.py [--shm NAME] [--base HEX] [--pings N] [--sizes 17,1520] [--timeout S]
              [--keep] [--no-announce] [--early-vrings] [--probe-delay S]
"""
import argparse, mmap, os, struct, sys, time

SIZE = 197072
BASE, SEQS, SEQM, BOOTS, BOOTM, RSC = 0x00, 0x08, 0x0C, 0x10, 0x14, 0x18
CMD_MASTER = RSC + 8
BOOT, OK, NEED_RESET = 1, 2, 4
CMD_STOP = 4
TICK = 0.010
ANY = 0xFFFFFFFF

RSC_CARVEOUT, RSC_VDEV = 0, 3
VIRTIO_ID_ENTROPY, VIRTIO_ID_RPMSG = 4, 7
DRIVER_OK = 4
DESC_WRITE = 2
CHAIN_END = 0x8000                         # what NuttX leaves in `next` of a lone descriptor
AVAIL_NO_INTERRUPT, USED_NO_NOTIFY = 1, 1
CARVEOUT_LEN = 0x10000
VRING_NUM, VRING_ALIGN = 8, 8
BUF_SIZE = 0x600

F_NS, F_ACK, F_BUFSZ, F_CPUNAME = 0, 1, 2, 3
RPMSG_FEATURES = (1 << F_NS) | (1 << F_ACK) | (1 << F_BUFSZ) | (1 << F_CPUNAME)
NS_ADDR, PING_ADDR = 0x35, 0x400
NS_CREATE, NS_DESTROY, NS_CREATE_ACK = 0, 1, 2
NS_FLAG_NAMES = {NS_CREATE: "CREATE", NS_DESTROY: "DESTROY", NS_CREATE_ACK: "CREATE_ACK"}
PING_NAME = b"rpmsg-ping"
PING_ACK, PING_CHECK, PING_CMD_MASK, PING_RSP = 0x1, 0x2, 0xF0, 0x20
HDR = struct.Struct("<IIIHH")
RNG_LEN = 1024


def say(*a):
    print("pyserver:", *a, flush=True)


class Fail(Exception):
    """A check failed or the peer broke the contract."""


class Timeout(Exception):
    pass


class Mem:
    def __init__(self, buf):
        self.buf = buf; self.len = len(buf)

    def _chk(self, off, n):
        if off < 0 or n < 0 or off + n > self.len:
            raise Fail(f"access {off:#x}+{n} outside the {self.len:#x}-byte object")

    def u8(self, o): self._chk(o, 1); return self.buf[o]
    def u16(self, o): self._chk(o, 2); return struct.unpack_from("<H", self.buf, o)[0]
    def u32(self, o): self._chk(o, 4); return struct.unpack_from("<I", self.buf, o)[0]
    def w8(self, o, v): self._chk(o, 1); self.buf[o] = v & 0xFF
    def w16(self, o, v): self._chk(o, 2); struct.pack_into("<H", self.buf, o, v & 0xFFFF)
    def w32(self, o, v): self._chk(o, 4); struct.pack_into("<I", self.buf, o, v & 0xFFFFFFFF)
    def w64(self, o, v): self._chk(o, 8); struct.pack_into("<Q", self.buf, o, v)
    def read(self, o, n): self._chk(o, n); return bytes(self.buf[o:o + n])
    def write(self, o, data): self._chk(o, len(data)); self.buf[o:o + len(data)] = data


def align_up(v, a):
    return (v + a - 1) & ~(a - 1)


def vring_size(num, align):
    """Legacy split-ring size when it starts aligned (Linux/OpenAMP formula)."""
    return align_up(16 * num + 2 * (3 + num), align) + 2 * 3 + 8 * num


# --------------------------------------------------------------------------- table

def build_table():
    """NuttX's sim_rptun table, before the master's assignments. Returns the
    bytes and (offset in table) of each vdev and carveout entry."""
    hdr_len = 16 + 4 * 6
    out = bytearray(hdr_len)
    offsets, vdevs, carveouts = [], [], []

    def vdev(vid, nvrings, dfeatures, config):
        offsets.append(len(out)); vdevs.append(len(out))
        out.extend(struct.pack("<6IBBBB", RSC_VDEV, vid, ANY, dfeatures, 0, len(config),
                               0, nvrings, 0, 0))        # status 0, reserved[0] = 0 (master drives)
        for _ in range(nvrings):
            out.extend(struct.pack("<5I", 0, VRING_ALIGN, VRING_NUM, ANY, 0))
        out.extend(config)

    def carveout(name, embedded):
        offsets.append(len(out)); carveouts.append(len(out))
        da = RSC + len(out) + 56                          # its memory follows the entry
        out.extend(struct.pack("<5I", RSC_CARVEOUT, da, ANY, CARVEOUT_LEN, 0) +
                   struct.pack("<I", 0) + name.ljust(32, b"\0"))
        if embedded:
            out.extend(bytes(CARVEOUT_LEN))

    vdev(VIRTIO_ID_ENTROPY, 1, 0, b""); carveout(b"rng0_shm", True)
    vdev(VIRTIO_ID_ENTROPY, 1, 0, b""); carveout(b"rng1_shm", True)
    config = struct.pack("<IIQQ8s8s24x", BUF_SIZE, BUF_SIZE, 0, 0, b"server", b"proxy")
    vdev(VIRTIO_ID_RPMSG, 2, RPMSG_FEATURES, config); carveout(b"rpmsg0_shm", False)
    struct.pack_into("<II", out, 0, 1, len(offsets))
    struct.pack_into("<6I", out, 16, *offsets)
    return bytes(out), vdevs, carveouts


# --------------------------------------------------------------------------- vrings

class DriverRing:
    """The driver side of a split virtqueue; keeps its own shadow of what it
    posted and never trusts the device's copy."""

    def __init__(self, srv, da, align, num, name):
        self.srv, self.mem, self.num, self.name = srv, srv.mem, num, name
        self.desc = da
        self.avail = da + 16 * num
        self.used = align_up(srv.base + self.avail + 4 + 2 * num + 2, align) - srv.base
        self.end = self.used + 4 + 8 * num + 2
        self.mem.write(da, bytes(self.end - da))
        for i in range(num):                            # NuttX's free chain, as in the snapshot
            struct.pack_into("<QIHH", self.mem.buf, self.desc + 16 * i, 0, 0, 0,
                             i + 1 if i + 1 < num else CHAIN_END)
        self.avail_idx = 0
        self.last_used = 0
        self.posted = {}                               # head -> (offset, len)

    def post(self, head, off, ln, writable):
        struct.pack_into("<QIHH", self.mem.buf, self.desc + 16 * head, self.srv.base + off, ln,
                         DESC_WRITE if writable else 0, CHAIN_END)
        self.posted[head] = (off, ln)
        self.mem.w16(self.avail + 4 + 2 * (self.avail_idx % self.num), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.w16(self.avail + 2, self.avail_idx)      # published after the entry

    def take_used(self):
        """(head, offset, buffer len, used len) of the next used entry, or None."""
        idx = self.mem.u16(self.used + 2)
        n = (idx - self.last_used) & 0xFFFF
        if n == 0:
            return None
        if n > self.num:
            raise Fail(f"{self.name}: used.idx jumped by {n} (> {self.num})")
        slot = self.used + 4 + 8 * (self.last_used % self.num)
        head, ln = self.mem.u32(slot), self.mem.u32(slot + 4)
        self.last_used = (self.last_used + 1) & 0xFFFF
        if head not in self.posted:
            raise Fail(f"{self.name}: used id {head} was not posted")
        off, buflen = self.posted.pop(head)
        return head, off, buflen, ln

    def wants_kick(self):
        return not self.mem.u16(self.used) & USED_NO_NOTIFY


# --------------------------------------------------------------------------- server

class Server:
    def __init__(self, mem, base, deadline, early_vrings=False, probe_delay=0.0):
        self.mem, self.base, self.deadline = mem, base, deadline
        self.early_vrings, self.probe_delay = early_vrings, probe_delay
        self.last_seqs = None
        self.errors = 0
        self.ping_dest = None
        self.responses = {}             # cookie -> payload
        self.ns_seen = []
        self.served = 0

    def error(self, msg):
        self.errors += 1
        say("ERROR", msg)

    def kick(self):
        self.mem.w32(SEQM, self.mem.u32(SEQM) + 1)       # count, wake nobody

    def wait(self, what, cond):
        """Runs ticks (servicing the rings when the proxy rang) until cond()."""
        while not cond():
            if time.monotonic() > self.deadline:
                raise Timeout(what)
            if self.mem.u32(BOOTM) & NEED_RESET:
                raise Fail("the remote restarted (bootm = NEED_RESET)")
            time.sleep(TICK)
            seqs = self.mem.u32(SEQS)
            if seqs != self.last_seqs:
                self.last_seqs = seqs
                self.service()

    # -- boot ---------------------------------------------------------------------
    def boot(self):
        m = self.mem
        table, self.vdev_offs, self.co_offs = build_table()
        m.write(RSC, bytes(SIZE - RSC))                   # clear the table area
        m.write(RSC, table)
        m.w64(BASE, self.base)
        if m.u32(BOOTS) & OK:                             # a remote is up from before: reboot it
            m.w32(BOOTS, NEED_RESET)
        m.w32(BOOTM, BOOT)
        # the master's remoteproc: notify ids, vdev then its vrings, in table order
        nid = 0
        for off in self.vdev_offs:
            m.w32(RSC + off + 8, nid); nid += 1
            for i in range(m.u8(RSC + off + 25)):
                m.w32(RSC + off + 28 + 20 * i + 12, nid); nid += 1
        say(f"table written: {len(table)} bytes at {RSC:#x}, base={self.base:#x}, "
            f"notify ids 0..{nid - 1}")
        self.carved = {}
        if self.early_vrings:                             # pre-refactor NuttX: before bootm = OK
            for k in range(len(self.vdev_offs)):
                self.carved[k] = self.carve(k)
            say("vring addresses assigned before bootm = OK (--early-vrings)")
        while not m.u32(BOOTS) & BOOT:
            if time.monotonic() > self.deadline:
                raise Timeout("the remote's boot handshake (boots & BOOT)")
            time.sleep(0.001)
        m.w32(BOOTM, OK)
        say("booted: remote answered (boots & BOOT), bootm = OK")

    # -- vdevs ----------------------------------------------------------------------
    def carve(self, k):
        """Assigns vring addresses from the front of carveout k; returns the
        rings' (da, align, num) and the heap start."""
        m = self.mem
        voff, coff = RSC + self.vdev_offs[k], RSC + self.co_offs[k]
        co_da, co_len = m.u32(coff + 4), m.u32(coff + 12)
        cursor, rings = co_da, []
        for i in range(m.u8(voff + 25)):
            r = voff + 28 + 20 * i
            da, align, num = m.u32(r), m.u32(r + 4), m.u32(r + 8)
            if da in (0, ANY):
                da = cursor
                m.w32(r, da)
                cursor += align_up(vring_size(num, align), align)
            rings.append((da, align, num))
        heap = align_up(cursor, 16) + 16
        if heap > co_da + co_len:
            raise Fail("vrings do not fit their carveout")
        return rings, heap, co_da + co_len

    def start(self):
        m = self.mem
        self.rng = []
        for k, voff in enumerate(self.vdev_offs):
            vid = m.u32(RSC + voff + 4)
            if k not in self.carved:
                time.sleep(self.probe_delay)           # the previous vdev's probe, in NuttX
                self.carved[k] = self.carve(k)
            rings, heap, heap_end = self.carved[k]
            if vid == VIRTIO_ID_ENTROPY:
                ring = DriverRing(self, *rings[0], f"rng{len(self.rng)}")
                self.rng.append(dict(ring=ring, buf=heap, got=None))
                m.w32(RSC + voff + 16, 0)                  # gfeatures
                m.w8(RSC + voff + 24, DRIVER_OK)
                say(f"{ring.name}: vring da={rings[0][0]:#x}, buffer at {heap:#x}, DRIVER_OK")
            elif vid == VIRTIO_ID_RPMSG:
                dfeat = m.u32(RSC + voff + 12)
                feats = dfeat & RPMSG_FEATURES
                m.w32(RSC + voff + 16, feats)
                cfg = RSC + voff + 28 + 20 * 2
                h2r, r2h = (m.u32(cfg), m.u32(cfg + 4)) if feats & (1 << F_BUFSZ) else (512, 512)
                self.rx = DriverRing(self, *rings[0], "rpmsg.vring0")
                self.tx = DriverRing(self, *rings[1], "rpmsg.vring1")
                n = self.rx.num
                if heap + n * r2h + self.tx.num * h2r > heap_end:
                    raise Fail("rpmsg buffers do not fit the carveout")
                for i in range(n):                         # every RX buffer before DRIVER_OK
                    self.rx.post(i, heap + i * r2h, r2h, True)
                self.tx_free = [heap + n * r2h + i * h2r for i in range(self.tx.num)]
                self.tx_fresh = list(range(self.tx.num))   # descriptors never used yet
                self.h2r, self.r2h, self.feats = h2r, r2h, feats
                m.w16(self.tx.avail, AVAIL_NO_INTERRUPT)   # no TX-complete doorbells, as NuttX
                m.w8(RSC + voff + 24, DRIVER_OK)
                say(f"rpmsg: gfeatures={feats:#x} vring0 da={rings[0][0]:#x} vring1 "
                    f"da={rings[1][0]:#x}, {n} RX buffers of {r2h:#x} from {heap:#x} posted, "
                    f"DRIVER_OK")
            else:
                raise Fail(f"unexpected vdev id {vid}")
        self.kick()

    # -- rpmsg ----------------------------------------------------------------------
    def send(self, src, dst, payload):
        if 16 + len(payload) > self.h2r:
            raise Fail(f"{len(payload)}-byte payload exceeds the {self.h2r}-byte buffer")

        def have_buffer():
            if self.tx_fresh:
                return True
            got = self.tx.take_used()                  # reclaim straight from the used ring
            if got is None:
                return False
            head, off, _, _ = got
            self.tx_fresh.append(head); self.tx_free.append(off)
            return True

        self.wait("a TX buffer back from the proxy (vring1 used ring)", have_buffer)
        head, off = self.tx_fresh.pop(0), self.tx_free.pop(0)
        m = self.mem
        m.write(off, HDR.pack(src, dst, 0, len(payload), 0) + payload)
        self.tx.post(head, off, self.h2r, False)          # whole buffer, as NuttX does
        if self.tx.wants_kick():
            self.kick()

    def send_ns(self, flags):
        self.send(PING_ADDR, NS_ADDR, PING_NAME.ljust(32, b"\0") + struct.pack("<II", PING_ADDR, flags))

    def service(self):
        """Everything a doorbell from the proxy may mean."""
        reposted = False
        for _ in range(self.rx.num):
            got = self.rx.take_used()
            if got is None:
                break
            head, off, buflen, ln = got
            src, dst, _, plen, _ = HDR.unpack(self.mem.read(off, 16))
            if 16 + plen > min(buflen, self.r2h):
                self.error(f"rpmsg len {plen} exceeds the {buflen}-byte buffer")
            elif ln and ln < 16 + plen:
                self.error(f"used len {ln} shorter than the message ({16 + plen} bytes)")
            else:
                self.dispatch(src, dst, self.mem.read(off + 16, plen))
            self.rx.post(head, off, buflen, True)
            reposted = True
        if reposted and self.rx.wants_kick():
            self.kick()
        for r in self.rng:
            got = r["ring"].take_used()
            if got is not None:
                _, off, buflen, ln = got
                if ln > buflen:
                    self.error(f"{r['ring'].name}: used len {ln} > buffer {buflen}")
                    ln = buflen
                r["got"] = self.mem.read(off, ln)

    def dispatch(self, src, dst, p):
        if dst == NS_ADDR:
            if len(p) < 40:
                self.error(f"NS message of {len(p)} bytes")
                return
            name = p[:32].split(b"\0", 1)[0]
            addr, flags = struct.unpack_from("<II", p, 32)
            fname = NS_FLAG_NAMES.get(flags, str(flags))
            self.ns_seen.append(f"{name.decode('ascii', 'replace')}:{fname}")
            say(f"NS {fname} {name.decode('ascii', 'replace')} addr={addr:#x}")
            if name != PING_NAME:
                return
            if flags == NS_CREATE:
                self.ping_dest = addr
                if self.feats & (1 << F_ACK):
                    self.pending_ack = True
            elif flags == NS_CREATE_ACK:
                self.ping_dest = addr
            elif flags == NS_DESTROY and addr == self.ping_dest:
                self.ping_dest = None
        elif dst == PING_ADDR:
            if len(p) < 16:
                self.error(f"ping message of {len(p)} bytes")
                return
            cmd, mlen, cookie = struct.unpack_from("<IIQ", p, 0)
            if cmd & PING_CMD_MASK == PING_RSP:
                if cookie in self.responses:
                    self.error(f"second response for cookie {cookie:#x}")
                self.responses[cookie] = p
            elif cmd & PING_ACK:                           # a ping from the proxy: echo it
                self.served += 1
                self.pending_echo.append((src, struct.pack("<II", PING_RSP, len(p)) + p[8:]))
        else:
            self.error(f"message from {src:#x} to unknown address {dst:#x}")

    def flush_replies(self):
        if getattr(self, "pending_ack", False):
            self.pending_ack = False
            self.send_ns(NS_CREATE_ACK)
            say(f"CREATE_ACK sent: rpmsg-ping addr={PING_ADDR:#x}")
        while self.pending_echo:
            dst, reply = self.pending_echo.pop(0)
            self.send(PING_ADDR, dst, reply)

    # -- the checks ---------------------------------------------------------------------
    def run(self, pings, sizes, announce=True):
        self.pending_echo = []
        self.start()
        if announce and self.feats & (1 << F_NS):
            self.send_ns(NS_CREATE)
            say(f"NS CREATE sent: rpmsg-ping addr={PING_ADDR:#x}")
        self.wait("the proxy's rpmsg-ping announcement", lambda: self.ping_dest is not None)
        self.flush_replies()
        say(f"rpmsg-ping bound to {self.ping_dest:#x}")
        cap = self.h2r - 16
        results, cookie = [], 0x5EED0000
        for size in sizes:
            if size > cap:
                raise Fail(f"ping size {size} exceeds the payload capacity {cap}")
            rtts = []
            for i in range(pings):
                cookie += 1
                data = bytes([i & 0xFF]) * (size - 16)
                msg = struct.pack("<IIQ", PING_ACK | PING_CHECK, size, cookie) + data
                t0 = time.monotonic()
                self.send(PING_ADDR, self.ping_dest, msg)
                self.wait(f"the echo of ping {i} ({size} bytes)",
                          lambda c=cookie: c in self.responses)
                rtts.append(time.monotonic() - t0)
                self.flush_replies()
                got = self.responses.pop(cookie)
                want = struct.pack("<II", PING_RSP, size) + msg[8:]
                if got != want:
                    diff = next((j for j in range(min(len(got), len(want))) if got[j] != want[j]),
                                min(len(got), len(want)))
                    self.error(f"echo of ping {i} ({size} bytes): {len(got)} bytes, first "
                               f"difference at byte {diff} (cmd={struct.unpack_from('<I', got)[0]:#x})")
            avg = sum(rtts) / len(rtts)
            say(f"ping times: {pings} buffer_len: {cap} send_len: {size} "
                f"avg: {avg * 1e3:.1f} ms min: {min(rtts) * 1e3:.1f} ms max: {max(rtts) * 1e3:.1f} ms")
            results.append(f"{size}x{pings}")
        # entropy: one 1024-byte device-writable request per vdev
        for r in self.rng:
            self.mem.write(r["buf"], bytes(RNG_LEN))
            r["ring"].post(0, r["buf"], RNG_LEN, True)
        self.kick()
        self.wait("random bytes from both entropy vdevs",
                  lambda: all(r["got"] is not None for r in self.rng))
        got = [r["got"] for r in self.rng]
        for r, g in zip(self.rng, got):
            say(f"{r['ring'].name}: {len(g)} bytes, first 8: {g[:8].hex()}")
            if len(g) != RNG_LEN:
                self.error(f"{r['ring'].name}: {len(g)} random bytes, want {RNG_LEN}")
            if g == bytes(len(g)):
                self.error(f"{r['ring'].name}: all zero")
        if len(got) == 2 and got[0] == got[1]:
            self.error("rng0 and rng1 returned the same bytes")
        return results, [len(g) for g in got]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shm", default="server-proxy", help="shm object name (default server-proxy)")
    ap.add_argument("--base", type=lambda s: int(s, 0), default=0xF3D5C000,
                    help="the 32-bit page-aligned base to publish (default 0xf3d5c000)")
    ap.add_argument("--pings", type=int, default=3, help="pings per size (default 3)")
    ap.add_argument("--sizes", default="17,1520", help="ping sizes (default 17,1520)")
    ap.add_argument("--timeout", type=float, default=60.0, help="give up after S seconds")
    ap.add_argument("--keep", action="store_true", help="do not unlink the object at the end")
    ap.add_argument("--no-announce", action="store_true",
                    help="do not announce our rpmsg-ping: bind only on the proxy's CREATE")
    ap.add_argument("--early-vrings", action="store_true",
                    help="write every vring address before bootm = OK (pre-refactor NuttX order)")
    ap.add_argument("--probe-delay", type=float, default=0.0, metavar="S",
                    help="wait S seconds before creating each vdev after bootm = OK (NuttX "
                    "creates and probes one vdev after the other)")
    a = ap.parse_args()
    if a.base & 0xFFF or a.base + SIZE > 1 << 32:
        ap.error("--base must be page aligned and leave the object below 4 GiB")
    sizes = [int(s) for s in a.sizes.split(",") if s]
    path = "/dev/shm/" + a.shm
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    if os.fstat(fd).st_size < SIZE:
        os.ftruncate(fd, SIZE)
    mm = mmap.mmap(fd, SIZE, mmap.MAP_SHARED)
    os.close(fd)
    say(f"created {path} ({SIZE} bytes)")
    s = Server(Mem(mm), a.base, time.monotonic() + a.timeout, a.early_vrings, a.probe_delay)
    code = 0
    try:
        s.boot()
        results, rng = s.run(a.pings, sizes, announce=not a.no_announce)
        code = 0 if s.errors == 0 else 1
        summary = (f"summary: ok={'yes' if code == 0 else 'no'} pings=[{','.join(results)}] "
                   f"rng={rng} served={s.served} ns=[{','.join(s.ns_seen)}] errors={s.errors}")
    except Timeout as e:
        code = 2
        summary = f"summary: ok=no TIMEOUT waiting for {e} errors={s.errors}"
    except Fail as e:
        code = 1
        summary = f"summary: ok=no FAILED: {e} errors={s.errors + 1}"
    mm[CMD_MASTER:CMD_MASTER + 4] = struct.pack("<I", CMD_STOP << 16)
    say(f"STOP written to cmd_master")
    if not a.keep and struct.unpack_from("<I", mm, BOOTS)[0] & OK:
        os.unlink(path)
        say(f"{path} unlinked")
    say(summary)
    return code


if __name__ == "__main__":
    sys.exit(main())
