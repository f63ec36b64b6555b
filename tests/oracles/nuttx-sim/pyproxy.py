#!/usr/bin/env python3
"""A NuttX-like REMOTE (`sim:rpproxy`) for the NuttX simulator's shared-memory
contract, written from its byte-level description only (DESIGN.md §3, §4, §5,
§7 and the decoded NuttX snapshots), with the Python standard library.

It maps /dev/shm/<name> (197072 bytes, created if missing), runs the remote
boot handshake, reads `base` and the resource table at 0x18, waits for
DRIVER_OK on each vdev and then serves, as the virtio DEVICE:
  - both entropy vdevs: fills every device-writable descriptor with random
    bytes, used length = bytes written;
  - the rpmsg vdev: vring0 is its TX (buffers the driver posted), vring1 its
    RX; it announces `rpmsg-ping` (NS CREATE from 0x400), binds on the
    driver's CREATE (answering CREATE_ACK) or CREATE_ACK, and answers pings
    (response cmd 0x20, data checked when bit 1 is set).
Doorbells are NuttX's: it only increments its counter `seqs` and polls the
master's `seqm` every tick (10 ms); it never wakes anybody. It exits on STOP
in `cmd_master` (exit 0 when nothing went wrong, 1 otherwise) or on timeout
(exit 2). Every line it prints starts with "pyproxy: "; the last one is the
summary.

  pyproxy.py [--shm NAME] [--timeout S]
  pyproxy.py --parse FILE     # print the layout found in a snapshot, exit
"""
import argparse, mmap, os, struct, sys, time

SIZE = 197072
BASE, SEQS, SEQM, BOOTS, BOOTM, RSC = 0x00, 0x08, 0x0C, 0x10, 0x14, 0x18
CMD_MASTER = RSC + 8                      # the table header's reserved[0]
BOOT, OK, NEED_RESET = 1, 2, 4
CMD_STOP = 4
TICK = 0.010                              # NuttX's system tick

RSC_CARVEOUT, RSC_VDEV = 0, 3
VIRTIO_ID_ENTROPY, VIRTIO_ID_RPMSG = 4, 7
DRIVER_OK = 4
DESC_NEXT, DESC_WRITE, DESC_INDIRECT = 1, 2, 4
AVAIL_NO_INTERRUPT = 1

F_NS, F_ACK, F_BUFSZ, F_CPUNAME = 0, 1, 2, 3
OUR_FEATURES = (1 << F_NS) | (1 << F_ACK) | (1 << F_BUFSZ) | (1 << F_CPUNAME)
NS_ADDR, PING_ADDR = 0x35, 0x400
NS_CREATE, NS_DESTROY, NS_CREATE_ACK = 0, 1, 2
NS_FLAG_NAMES = {NS_CREATE: "CREATE", NS_DESTROY: "DESTROY", NS_CREATE_ACK: "CREATE_ACK"}
PING_NAME = b"rpmsg-ping"
PING_ACK, PING_CHECK, PING_CMD_MASK, PING_RSP = 0x1, 0x2, 0xF0, 0x20
HDR = struct.Struct("<IIIHH")             # src dst reserved len flags
MAX_PENDING = 256                         # outgoing messages waiting for a TX buffer
MAX_RNG_DESC = 0x10000                    # largest entropy buffer we fill


def say(*a):
    print("pyproxy:", *a, flush=True)


class PeerError(Exception):
    """The master put something in shared memory that breaks the contract."""


class Mem:
    """Bounds-checked little-endian access to the object (an mmap or bytes)."""

    def __init__(self, buf):
        self.buf = buf; self.len = len(buf)

    def _chk(self, off, n):
        if off < 0 or n < 0 or off + n > self.len:
            raise PeerError(f"access {off:#x}+{n} outside the {self.len:#x}-byte object")

    def u8(self, o): self._chk(o, 1); return self.buf[o]
    def u16(self, o): self._chk(o, 2); return struct.unpack_from("<H", self.buf, o)[0]
    def u32(self, o): self._chk(o, 4); return struct.unpack_from("<I", self.buf, o)[0]
    def u64(self, o): self._chk(o, 8); return struct.unpack_from("<Q", self.buf, o)[0]
    def w16(self, o, v): self._chk(o, 2); struct.pack_into("<H", self.buf, o, v & 0xFFFF)
    def w32(self, o, v): self._chk(o, 4); struct.pack_into("<I", self.buf, o, v & 0xFFFFFFFF)
    def read(self, o, n): self._chk(o, n); return bytes(self.buf[o:o + n])
    def write(self, o, data): self._chk(o, len(data)); self.buf[o:o + len(data)] = data


def cstr(b):
    return b.split(b"\0", 1)[0].decode("ascii", "replace")


# --------------------------------------------------------------------------- table

class Vdev:
    def __init__(self, mem, off, index):
        self.mem, self.off, self.index = mem, off, index
        (_, self.id, self.notifyid, self.dfeatures, self.gfeatures,
         self.config_len) = struct.unpack_from("<6I", mem.read(off, 24))
        self.nvrings = mem.u8(off + 25)
        self.reserved0 = mem.u8(off + 26)
        if self.nvrings > 8 or self.config_len > 0x1000:
            raise PeerError(f"vdev@{off:#x}: {self.nvrings} vrings, config_len {self.config_len}")
        self.config_off = off + 28 + 20 * self.nvrings
        mem._chk(off, 28 + 20 * self.nvrings + self.config_len)

    def status(self):
        return self.mem.u8(self.off + 24)

    def vrings(self):
        """(da, align, num, notifyid) of each vring, re-read from the table."""
        return [struct.unpack_from("<4I", self.mem.read(self.off + 28 + 20 * i, 16))
                for i in range(self.nvrings)]

    def refresh(self):
        self.notifyid, self.dfeatures, self.gfeatures = struct.unpack_from(
            "<3I", self.mem.read(self.off + 8, 12))


def parse_table(mem):
    """The vdevs and carveouts of the table at RSC, in table order."""
    ver, num = mem.u32(RSC), mem.u32(RSC + 4)
    if ver != 1 or not 0 < num <= 32:
        raise PeerError(f"resource table ver={ver} num={num}")
    vdevs, carveouts = [], []
    for i in range(num):
        off = RSC + mem.u32(RSC + 16 + 4 * i)
        typ = mem.u32(off)
        if typ == RSC_VDEV:
            vdevs.append(Vdev(mem, off, len(vdevs)))
        elif typ == RSC_CARVEOUT:
            da, pa, ln, flags, _ = struct.unpack_from("<5I", mem.read(off + 4, 20))
            carveouts.append((cstr(mem.read(off + 24, 32)), da, pa, ln))
    return ver, num, vdevs, carveouts


# --------------------------------------------------------------------------- vrings

class DeviceRing:
    """The device side of a split virtqueue at table da `da` (= object offset)."""

    def __init__(self, mem, base, da, align, num, name):
        if num == 0 or num > 1024 or num & (num - 1) or align == 0 or align & (align - 1):
            raise PeerError(f"{name}: bad vring num={num} align={align}")
        self.mem, self.base, self.num, self.name = mem, base, num, name
        self.desc = da
        self.avail = da + 16 * num
        avail_end = self.avail + 4 + 2 * num + 2
        # the used ring is aligned in the shared physical space (base + offset)
        self.used = ((base + avail_end + align - 1) & ~(align - 1)) - base
        mem._chk(self.desc, self.used + 4 + 8 * num + 2 - da)
        self.last_avail = 0

    def pending(self):
        n = (self.mem.u16(self.avail + 2) - self.last_avail) & 0xFFFF
        if n > self.num:
            raise PeerError(f"{self.name}: avail.idx jumped by {n} (> {self.num})")
        return n

    def pop(self):
        """(head, [(offset, len, flags)]) of the next available chain, or None."""
        if not self.pending():
            return None
        head = self.mem.u16(self.avail + 4 + 2 * (self.last_avail % self.num))
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if head >= self.num:
            raise PeerError(f"{self.name}: avail head {head} >= {self.num}")
        chain, i = [], head
        for _ in range(self.num):
            addr, ln, flags, nxt = struct.unpack_from("<QIHH", self.mem.read(self.desc + 16 * i, 16))
            if flags & DESC_INDIRECT:
                raise PeerError(f"{self.name}: indirect descriptor {i}")
            off = addr - self.base
            self.mem._chk(off, ln)            # the buffer lies inside the object
            chain.append((off, ln, flags))
            if not flags & DESC_NEXT:
                return head, chain
            if nxt >= self.num:
                raise PeerError(f"{self.name}: desc {i} next {nxt} >= {self.num}")
            i = nxt
        raise PeerError(f"{self.name}: descriptor chain from {head} loops")

    def push(self, head, length):
        idx = self.mem.u16(self.used + 2)
        slot = self.used + 4 + 8 * (idx % self.num)
        self.mem.w32(slot, head); self.mem.w32(slot + 4, length)
        self.mem.w16(self.used + 2, idx + 1)   # published after the element

    def wants_kick(self):
        return not self.mem.u16(self.avail) & AVAIL_NO_INTERRUPT


# --------------------------------------------------------------------------- proxy

class Proxy:
    def __init__(self, mem):
        self.mem = mem
        self.errors = 0
        self.kick = False
        self.rng = {}                # vdev index -> [ring, requests, bytes]
        self.rpmsg = None            # dict once the rpmsg vdev is live
        self.pending = []            # (src, dst, payload) waiting for a TX buffer
        self.ping_dest = None        # the driver's rpmsg-ping address once bound
        self.pings = {}              # payload size -> count
        self.replies = 0
        self.check_errors = 0
        self.ns_seen = []

    def error(self, msg):
        self.errors += 1
        say("ERROR", msg)

    # -- boot and layout -------------------------------------------------------
    def boot(self, deadline):
        m = self.mem
        if m.u32(BOOTS) & OK:                  # a previous remote was up: master must reboot
            m.w32(BOOTM, NEED_RESET)
        m.w32(BOOTS, BOOT)
        while not m.u32(BOOTM) & OK:
            if time.monotonic() > deadline:
                say("TIMEOUT waiting for the master's boot handshake (bootm & OK)")
                sys.exit(2)
            time.sleep(0.001)
        self.base = m.u64(BASE)
        m.w32(BOOTS, OK)
        say(f"booted: base={self.base:#x} seqs={m.u32(SEQS)} seqm={m.u32(SEQM)}")

    def layout(self):
        ver, num, self.vdevs, carveouts = parse_table(self.mem)
        desc = [f"vdev{v.index}(id={v.id} nvrings={v.nvrings} reserved0={v.reserved0})"
                for v in self.vdevs]
        say(f"table ver={ver} num={num} " + " ".join(desc) + " carveouts=" +
            ",".join(f"{n}@{da:#x}+{ln:#x}" for n, da, _, ln in carveouts))
        self.live = set()
        for v in self.vdevs:
            if v.reserved0 != 0:
                raise PeerError(f"vdev{v.index}: reserved[0]={v.reserved0}: this proxy is "
                                "the device side only (master must be the driver)")

    # -- vdev start-up (after DRIVER_OK) --------------------------------------------
    def start_vdev(self, v):
        v.refresh()
        vr = v.vrings()
        names = [f"da={da:#x} align={al} num={n} notifyid={nid}" for da, al, n, nid in vr]
        if v.id == VIRTIO_ID_ENTROPY:
            if len(vr) != 1:
                raise PeerError(f"entropy vdev{v.index} has {len(vr)} vrings")
            ring = DeviceRing(self.mem, self.base, vr[0][0], vr[0][1], vr[0][2], f"rng{len(self.rng)}")
            self.rng[v.index] = [ring, 0, 0]
            say(f"{ring.name} DRIVER_OK status={v.status():#x} notifyid={v.notifyid} vring {names[0]}")
            self.serve_rng(v.index)
        elif v.id == VIRTIO_ID_RPMSG:
            if len(vr) != 2:
                raise PeerError(f"rpmsg vdev{v.index} has {len(vr)} vrings")
            feats = v.gfeatures
            if feats & ~v.dfeatures:
                self.error(f"gfeatures {feats:#x} not within dfeatures {v.dfeatures:#x}")
            cfg = self.mem.read(v.config_off, v.config_len)
            h2r = r2h = 512
            host = remote = ""
            if feats & (1 << F_BUFSZ):
                if len(cfg) < 8:
                    raise PeerError("BUFSZ negotiated without a config space")
                h2r, r2h = struct.unpack_from("<II", cfg, 0)
            if feats & (1 << F_CPUNAME) and len(cfg) >= 40:
                host, remote = cstr(cfg[24:32]), cstr(cfg[32:40])
                if not host and len(cfg) >= 24:       # pre-March-2026 layout: names @8/@16
                    host, remote = cstr(cfg[8:16]), cstr(cfg[16:24])
            if not 16 < h2r <= 0x10000 or not 16 < r2h <= 0x10000:
                raise PeerError(f"rpmsg buffer sizes h2r={h2r} r2h={r2h}")
            self.rpmsg = dict(
                vdev=v, feats=feats, h2r=h2r, r2h=r2h,
                tx=DeviceRing(self.mem, self.base, vr[0][0], vr[0][1], vr[0][2], "rpmsg.vring0"),
                rx=DeviceRing(self.mem, self.base, vr[1][0], vr[1][1], vr[1][2], "rpmsg.vring1"))
            say(f"rpmsg DRIVER_OK status={v.status():#x} notifyid={v.notifyid} gfeatures={feats:#x} "
                f"host={host!r} remote={remote!r} h2r_buf_size={h2r} r2h_buf_size={r2h} "
                f"vring0 {names[0]} vring1 {names[1]} "
                f"rx_posted={self.rpmsg['tx'].pending()}")
            if feats & (1 << F_NS):
                self.send_ns(PING_NAME, PING_ADDR, NS_CREATE)
                say(f"NS CREATE sent: {PING_NAME.decode()} addr={PING_ADDR:#x}")
            self.serve_rpmsg()
        else:
            say(f"vdev{v.index} id={v.id} DRIVER_OK: no such device here, ignored")

    # -- entropy ----------------------------------------------------------------
    def serve_rng(self, index):
        st = self.rng[index]
        ring = st[0]
        for _ in range(ring.num):
            got = ring.pop()
            if got is None:
                break
            head, chain = got
            written = 0
            for off, ln, flags in chain:
                if not flags & DESC_WRITE:
                    self.error(f"{ring.name}: request descriptor is not device-writable")
                    continue
                n = min(ln, MAX_RNG_DESC)
                self.mem.write(off, os.urandom(n))
                written += n
            ring.push(head, written)
            st[1] += 1; st[2] += written
            say(f"{ring.name} request {st[1]}: {len(chain)} descriptor(s), {written} random bytes")
            self.kick |= ring.wants_kick()

    # -- rpmsg ------------------------------------------------------------------
    def send_ns(self, name, addr, flags):
        payload = name.ljust(32, b"\0")[:32] + struct.pack("<II", addr, flags)
        self.queue(addr, NS_ADDR, payload)

    def queue(self, src, dst, payload):
        if len(self.pending) >= MAX_PENDING:
            self.error("outgoing queue full: the driver returns no TX buffers")
            return
        self.pending.append((src, dst, payload))

    def flush_tx(self):
        """Sends what the driver's posted buffers allow (never blocks)."""
        r = self.rpmsg
        if r is None:
            return
        while self.pending:
            got = r["tx"].pop()
            if got is None:
                return
            head, chain = got
            off, ln, flags = chain[0]
            if len(chain) != 1 or not flags & DESC_WRITE:
                self.error(f"vring0 buffer {head}: {len(chain)} descriptor(s), flags {flags:#x} "
                           "(want one device-writable descriptor)")
                r["tx"].push(head, 0); self.kick |= r["tx"].wants_kick()
                continue
            src, dst, payload = self.pending[0]
            cap = min(ln, r["r2h"]) - 16
            if len(payload) > cap:
                self.error(f"vring0 buffer {head}: {ln} bytes, too small for {len(payload)}")
                r["tx"].push(head, 0); self.kick |= r["tx"].wants_kick()
                continue
            self.pending.pop(0)
            self.mem.write(off, HDR.pack(src, dst, 0, len(payload), 0) + payload)
            r["tx"].push(head, 16 + len(payload))
            self.kick |= r["tx"].wants_kick()

    def serve_rpmsg(self):
        r = self.rpmsg
        for _ in range(r["rx"].num):
            got = r["rx"].pop()
            if got is None:
                break
            head, chain = got
            off, ln, flags = chain[0]
            if len(chain) != 1 or flags & DESC_WRITE:
                self.error(f"vring1 buffer {head}: {len(chain)} descriptor(s), flags {flags:#x} "
                           "(want one driver-written descriptor)")
            elif ln < 16:
                self.error(f"vring1 buffer {head}: {ln} bytes, shorter than an rpmsg header")
            else:
                src, dst, _, plen, _ = HDR.unpack(self.mem.read(off, 16))
                if 16 + plen > min(ln, r["h2r"]):
                    self.error(f"rpmsg len {plen} exceeds its {ln}-byte buffer")
                else:
                    self.dispatch(src, dst, self.mem.read(off + 16, plen))
            r["rx"].push(head, ln)
            self.kick |= r["rx"].wants_kick()
        self.flush_tx()

    def dispatch(self, src, dst, p):
        if dst == NS_ADDR:
            if len(p) < 40:
                self.error(f"NS message of {len(p)} bytes from {src:#x}")
                return
            name = p[:32].split(b"\0", 1)[0]
            addr, flags = struct.unpack_from("<II", p, 32)
            fname = NS_FLAG_NAMES.get(flags, str(flags))
            self.ns_seen.append(f"{name.decode('ascii', 'replace')}:{fname}")
            if name != PING_NAME:
                say(f"NS {fname} {name.decode('ascii', 'replace')} addr={addr:#x} (no such service here)")
                return
            if flags == NS_CREATE:
                self.ping_dest = addr
                if self.rpmsg["feats"] & (1 << F_ACK):
                    self.send_ns(PING_NAME, PING_ADDR, NS_CREATE_ACK)
                say(f"NS CREATE rpmsg-ping addr={addr:#x}: bound" +
                    (", CREATE_ACK sent" if self.rpmsg["feats"] & (1 << F_ACK) else ""))
            elif flags == NS_CREATE_ACK:
                self.ping_dest = addr
                say(f"NS CREATE_ACK rpmsg-ping addr={addr:#x}: bound")
            elif flags == NS_DESTROY:
                say(f"NS DESTROY rpmsg-ping addr={addr:#x}: unbound")
                if addr == self.ping_dest:
                    self.ping_dest = None
            else:
                self.error(f"NS flags {flags} for rpmsg-ping")
        elif dst == PING_ADDR:
            self.ping(src, p)
        else:
            self.error(f"message from {src:#x} to unknown address {dst:#x} ({len(p)} bytes)")

    def ping(self, src, p):
        if self.ping_dest is None:            # unbound endpoints adopt the first sender
            self.ping_dest = src
        if len(p) < 16:
            self.error(f"ping of {len(p)} bytes from {src:#x}")
            return
        cmd, mlen, cookie = struct.unpack_from("<IIQ", p, 0)
        if cmd & PING_CMD_MASK == PING_RSP:
            self.error(f"unexpected ping response from {src:#x} (this proxy sends no pings)")
            return
        self.pings[len(p)] = self.pings.get(len(p), 0) + 1
        if mlen != len(p):
            self.error(f"ping header len {mlen} != rpmsg payload len {len(p)}")
        if cmd & PING_CHECK:
            data = p[16:]
            bad = next((i for i, b in enumerate(data) if b != data[0]), None)
            if bad is not None:
                self.check_errors += 1
                self.error(f"ping data check failed at byte {bad} of {len(data)}")
        if src != self.ping_dest:
            say(f"note: ping from {src:#x}, bound to {self.ping_dest:#x}")
        if cmd & PING_ACK:
            reply = struct.pack("<II", PING_RSP, len(p)) + p[8:]
            self.queue(PING_ADDR, self.ping_dest, reply)
            self.replies += 1

    # -- main loop --------------------------------------------------------------
    def summary(self):
        rng = " ".join(f"{st[0].name}_requests={st[1]} {st[0].name}_bytes={st[2]}"
                       for _, st in sorted(self.rng.items()))
        sizes = ",".join(f"{k}x{v}" for k, v in sorted(self.pings.items()))
        return (f"summary: pings={sum(self.pings.values())} sizes=[{sizes}] replies={self.replies} "
                f"check_errors={self.check_errors} {rng} ns=[{','.join(self.ns_seen)}] "
                f"errors={self.errors}")

    def run(self, deadline):
        m = self.mem
        last_seqm = None
        while True:
            cmd = m.u32(CMD_MASTER)
            if cmd >> 16 == CMD_STOP:
                self.flush_tx()
                say(f"STOP from the master (cmd_master={cmd:#010x})")
                say(self.summary())
                return 0 if self.errors == 0 else 1
            if m.u32(BOOTS) & NEED_RESET:
                self.error("the master restarted (boots = NEED_RESET); this proxy does not reboot")
                say(self.summary())
                return 1
            if time.monotonic() > deadline:
                say("TIMEOUT: no STOP from the master")
                say(self.summary())
                return 2
            for v in self.vdevs:
                if v.index not in self.live and v.status() & DRIVER_OK:
                    self.live.add(v.index)
                    self.start_vdev(v)
            seqm = m.u32(SEQM)
            if seqm != last_seqm:              # the master rang: service every vring
                last_seqm = seqm
                for idx in self.rng:
                    self.serve_rng(idx)
                if self.rpmsg is not None:
                    self.serve_rpmsg()
            self.flush_tx()
            if self.kick:
                self.kick = False
                m.w32(SEQS, m.u32(SEQS) + 1)   # NuttX's doorbell: count, wake nobody
            time.sleep(TICK)


def parse_snapshot(path):
    """Prints the layout a remote finds in a saved object (no handshake)."""
    data = bytearray(open(path, "rb").read())
    mem = Mem(data)
    base = mem.u64(BASE)
    say(f"snapshot {len(data)} bytes base={base:#x} seqs={mem.u32(SEQS)} seqm={mem.u32(SEQM)} "
        f"boots={mem.u32(BOOTS):#x} bootm={mem.u32(BOOTM):#x}")
    ver, num, vdevs, carveouts = parse_table(mem)
    say(f"table ver={ver} num={num} vdevs={len(vdevs)} carveouts=" +
        ",".join(f"{n}@{da:#x}+{ln:#x}" for n, da, _, ln in carveouts))
    for v in vdevs:
        say(f"vdev{v.index} id={v.id} notifyid={v.notifyid} dfeatures={v.dfeatures:#x} "
            f"gfeatures={v.gfeatures:#x} status={v.status():#x} config_len={v.config_len}")
        if v.id == VIRTIO_ID_RPMSG and v.config_len >= 40:
            cfg = mem.read(v.config_off, v.config_len)
            h2r, r2h = struct.unpack_from("<II", cfg, 0)
            say(f"vdev{v.index} config h2r_buf_size={h2r} r2h_buf_size={r2h} "
                f"host={cstr(cfg[24:32])!r} remote={cstr(cfg[32:40])!r}")
        for i, (da, al, n, nid) in enumerate(v.vrings()):
            ring = DeviceRing(mem, base, da, al, n, f"vdev{v.index}.vring{i}")
            bufs = []
            for d in range(n):
                addr, ln, flags, _ = struct.unpack_from("<QIHH", mem.read(ring.desc + 16 * d, 16))
                if ln:
                    mem._chk(addr - base, ln)
                    bufs.append(f"{addr - base:#x}+{ln}{'w' if flags & DESC_WRITE else 'r'}")
            say(f"{ring.name} da={da:#x} notifyid={nid} desc@{ring.desc:#x} avail@{ring.avail:#x} "
                f"used@{ring.used:#x} avail.idx={mem.u16(ring.avail + 2)} "
                f"used.idx={mem.u16(ring.used + 2)} buffers=[{' '.join(bufs)}]")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shm", default="server-proxy", help="shm object name (default server-proxy)")
    ap.add_argument("--timeout", type=float, default=60.0, help="give up after S seconds")
    ap.add_argument("--parse", metavar="FILE", help="print the layout of a saved object and exit")
    a = ap.parse_args()
    if a.parse:
        parse_snapshot(a.parse)
        return 0
    deadline = time.monotonic() + a.timeout
    path = "/dev/shm/" + a.shm
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    if os.fstat(fd).st_size < SIZE:
        os.ftruncate(fd, SIZE)
    mm = mmap.mmap(fd, SIZE, mmap.MAP_SHARED)
    os.close(fd)
    say(f"attached {path} ({SIZE} bytes)")
    p = Proxy(Mem(mm))
    try:
        p.boot(deadline)
        p.layout()
        return p.run(deadline)
    except PeerError as e:
        say("ERROR (contract broken):", e)
        say(p.summary())
        return 1


if __name__ == "__main__":
    sys.exit(main())
