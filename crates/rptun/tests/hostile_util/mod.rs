//! A fake peer for the hostile-peer suite.
//!
//! Our side runs the real stack (an rpmsg [`Link`] over rpmsg-virtio over
//! the remoteproc vdev transport); the other side is played by the test with
//! raw reads and writes of the shared region, laid out by hand from the
//! formats of DESIGN.md §4 (resource table, split vring, rpmsg header, name
//! service). The fake peer behaves well by default and can be told to break
//! every rule: it is the thing under which our side must stay alive.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use rptun::remoteproc::addr::{AddrEnv, AddrEnvEntry, AddressMap, PhysMap};
use rptun::remoteproc::platform::{Doorbell, LinkMap, Notify, PlatformError, TableLocation};
use rptun::remoteproc::table::{adopt, assign, VdevInfo};
use rptun::remoteproc::vdev::{VdevDevice, VdevDriver, VdevLink};
use rptun::rpmsg::virtio::{RpmsgVirtioDevice, RpmsgVirtioDriver, RpmsgVirtioOptions};
use rptun::rpmsg::{
    on_message, EndpointConfig, EndpointId, Link, LocalCpu, RemoteCpu, RpmsgTransport,
};
use rptun::shm::Region;
use rptun::wire::rpmsg_config::{ConfigLayout, CpuName, RpmsgConfig};
use rptun::wire::rsc::{Carveout, Name, TableBuilder, Vdev, Vring, ANY};

pub const REGION_LEN: usize = 0x40000;
pub const BASE_PA: u64 = 0x8000_0000;
/// The resource table's offset in the region.
pub const RSC: usize = 0x18;
pub const RSC_MAX: usize = 0x400;
/// The carveout: da (= region offset) and length.
pub const CARVEOUT: usize = 0x1000;
pub const CARVEOUT_LEN: usize = 0x20000;
/// Nobody's memory: filled with a pattern, must never change.
pub const GUARD: usize = 0x30000;
pub const GUARD_LEN: usize = REGION_LEN - GUARD;
/// Buffer size of the NuttX-like config space (both ways).
pub const BUF: usize = 1536;
/// vring size.
pub const NUM: u16 = 8;
pub const ALIGN: usize = 8;

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;

pub const S_ACK: u8 = 1;
pub const S_DRIVER: u8 = 2;
pub const S_DRIVER_OK: u8 = 4;
pub const S_NEEDS_RESET: u8 = 0x40;
pub const S_FAILED: u8 = 0x80;

/// The name service's address and flags.
pub const NS: u32 = 0x35;
pub const NS_CREATE: u32 = 0;
pub const NS_DESTROY: u32 = 1;
pub const NS_CREATE_ACK: u32 = 2;

/// The fake peer's endpoint address.
pub const PEER_ADDR: u32 = 0x400;

/// Records the doorbells our side rings.
#[derive(Clone, Default)]
pub struct Bell(pub Arc<Mutex<Vec<u32>>>);

impl Notify for Bell {
    fn notify(&self, target: Doorbell) -> Result<(), PlatformError> {
        self.0.lock().unwrap().push(target.to_raw());
        Ok(())
    }
}

pub type RDrv = RpmsgVirtioDriver<VdevDriver<Bell>, 256>;
pub type RDev = RpmsgVirtioDevice<VdevDevice<Bell>, 256>;

pub fn pa(offset: usize) -> u64 {
    BASE_PA + offset as u64
}

/// 64-byte rpmsg config space (current NuttX layout).
pub fn config(h2r: u32, r2h: u32) -> [u8; 64] {
    RpmsgConfig {
        h2r_buf_size: h2r,
        r2h_buf_size: r2h,
        h2r_buf_addr: 0,
        r2h_buf_addr: 0,
        host_cpuname: CpuName::new("server").unwrap(),
        remote_cpuname: CpuName::new("proxy").unwrap(),
    }
    .to_bytes(ConfigLayout::Current)
    .unwrap()
}

/// One rpmsg vdev (two vrings of [`NUM`] entries, align 8, placed by the
/// master) and its carveout; notify ids assigned by the master.
pub fn table(dfeatures: u32, config: &[u8]) -> Vec<u8> {
    let mut b = TableBuilder::new_vec(2).unwrap();
    let v = Vdev {
        id: rptun::virtio::id::RPMSG,
        notifyid: ANY,
        dfeatures,
        ..Vdev::default()
    };
    let ring = Vring {
        da: ANY,
        align: ALIGN as u32,
        num: u32::from(NUM),
        notifyid: ANY,
        reserved: 0,
    };
    b.add_vdev(&v, &[ring, ring], config).unwrap();
    b.add_carveout(&Carveout {
        da: CARVEOUT as u32,
        pa: ANY,
        len: CARVEOUT_LEN as u32,
        name: Name::new("rpmsg0_shm").unwrap(),
        ..Carveout::default()
    })
    .unwrap();
    b.finish_vec().unwrap()
}

pub fn map() -> LinkMap {
    let env = AddrEnv::from_entries(&[AddrEnvEntry {
        pa: BASE_PA,
        da: 0,
        size: REGION_LEN as u64,
    }])
    .unwrap();
    AddressMap::new(env, PhysMap::new(BASE_PA, REGION_LEN).unwrap())
}

pub fn loc() -> TableLocation {
    TableLocation {
        offset: RSC,
        max_len: RSC_MAX,
    }
}

/// The table's live words, located by hand (DESIGN.md §4): header 16 B, the
/// offset array, vdev entry 28 B then 20 B per vring then config space.
#[derive(Debug, Clone, Copy)]
pub struct TableMap {
    /// Region offsets of entry 0 (the vdev) and entry 1 (the carveout).
    pub vdev: usize,
    pub carveout: usize,
}

impl TableMap {
    pub fn read(r: &Region) -> TableMap {
        TableMap {
            vdev: RSC + r.read_u32(RSC + 16).unwrap() as usize,
            carveout: RSC + r.read_u32(RSC + 20).unwrap() as usize,
        }
    }
    pub fn num_entries(&self) -> usize {
        RSC + 4
    }
    pub fn offset_of_entry(&self, i: usize) -> usize {
        RSC + 16 + 4 * i
    }
    pub fn notifyid(&self) -> usize {
        self.vdev + 8
    }
    pub fn dfeatures(&self) -> usize {
        self.vdev + 12
    }
    pub fn gfeatures(&self) -> usize {
        self.vdev + 16
    }
    pub fn config_len(&self) -> usize {
        self.vdev + 20
    }
    pub fn status(&self) -> usize {
        self.vdev + 24
    }
    pub fn num_vrings(&self) -> usize {
        self.vdev + 25
    }
    /// vring `q`'s entry: da +0, align +4, num +8, notifyid +12.
    pub fn vring(&self, q: usize) -> usize {
        self.vdev + 28 + 20 * q
    }
    pub fn config(&self) -> usize {
        self.vring(2)
    }
    /// Carveout fields: da +4, pa +8, len +12.
    pub fn carveout_len(&self) -> usize {
        self.carveout + 12
    }
    /// Table bytes from the header to the end of the carveout entry.
    pub fn end(&self) -> usize {
        self.carveout + 56
    }
}

/// A split vring seen raw: legacy layout computed by hand.
#[derive(Debug, Clone)]
pub struct RawRing {
    pub r: Region,
    pub desc: usize,
    pub avail: usize,
    pub used: usize,
    pub num: u16,
}

impl RawRing {
    /// The ring whose vring entry is at `entry` (da is a region offset here:
    /// da 0 is pa BASE_PA, region offset 0).
    pub fn from_table(r: &Region, entry: usize) -> RawRing {
        let da = r.read_u32(entry).unwrap() as usize;
        let align = r.read_u32(entry + 4).unwrap() as usize;
        let num = r.read_u32(entry + 8).unwrap() as u16;
        let avail = da + 16 * usize::from(num);
        let used = (avail + 4 + 2 * usize::from(num) + 2 + align - 1) & !(align - 1);
        RawRing {
            r: r.clone(),
            desc: da,
            avail,
            used,
            num,
        }
    }
    pub fn desc_at(&self, i: u16) -> usize {
        self.desc + 16 * usize::from(i)
    }
    pub fn read_desc(&self, i: u16) -> (u64, u32, u16, u16) {
        let o = self.desc_at(i % self.num);
        (
            self.r.read_u64(o).unwrap(),
            self.r.read_u32(o + 8).unwrap(),
            self.r.read_u16(o + 12).unwrap(),
            self.r.read_u16(o + 14).unwrap(),
        )
    }
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let o = self.desc_at(i);
        self.r.write_u64(o, addr).unwrap();
        self.r.write_u32(o + 8, len).unwrap();
        self.r.write_u16(o + 12, flags).unwrap();
        self.r.write_u16(o + 14, next).unwrap();
    }
    pub fn avail_idx(&self) -> u16 {
        self.r.load_u16(self.avail + 2).unwrap()
    }
    pub fn set_avail_idx(&self, v: u16) {
        self.r.store_u16(self.avail + 2, v).unwrap();
    }
    pub fn avail_entry(&self, slot: u16) -> u16 {
        self.r
            .read_u16(self.avail + 4 + 2 * usize::from(slot % self.num))
            .unwrap()
    }
    pub fn set_avail_entry(&self, slot: u16, head: u16) {
        self.r
            .write_u16(self.avail + 4 + 2 * usize::from(slot % self.num), head)
            .unwrap();
    }
    pub fn used_idx(&self) -> u16 {
        self.r.load_u16(self.used + 2).unwrap()
    }
    pub fn set_used_idx(&self, v: u16) {
        self.r.store_u16(self.used + 2, v).unwrap();
    }
    pub fn used_elem(&self, slot: u16) -> (u32, u32) {
        let o = self.used + 4 + 8 * usize::from(slot % self.num);
        (self.r.read_u32(o).unwrap(), self.r.read_u32(o + 4).unwrap())
    }
    pub fn set_used_elem(&self, slot: u16, id: u32, len: u32) {
        let o = self.used + 4 + 8 * usize::from(slot % self.num);
        self.r.write_u32(o, id).unwrap();
        self.r.write_u32(o + 4, len).unwrap();
    }
    /// (offset, len) of the descriptor table plus the avail ring.
    pub fn driver_area(&self) -> (usize, usize) {
        (
            self.desc,
            self.avail + 6 + 2 * usize::from(self.num) - self.desc,
        )
    }
    /// (offset, len) of the used ring.
    pub fn device_area(&self) -> (usize, usize) {
        (self.used, 6 + 8 * usize::from(self.num))
    }
}

/// An rpmsg header.
pub fn header(src: u32, dst: u32, len: u16) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&src.to_le_bytes());
    h[4..8].copy_from_slice(&dst.to_le_bytes());
    h[12..14].copy_from_slice(&len.to_le_bytes());
    h
}

/// A whole rpmsg message.
pub fn message(src: u32, dst: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = header(src, dst, payload.len() as u16).to_vec();
    m.extend_from_slice(payload);
    m
}

/// A 40-byte name-service payload with a raw 32-byte name field.
pub fn ns_payload(name: &[u8; 32], addr: u32, flags: u32) -> Vec<u8> {
    let mut p = name.to_vec();
    p.extend_from_slice(&addr.to_le_bytes());
    p.extend_from_slice(&flags.to_le_bytes());
    p
}

/// A NUL-padded name field.
pub fn name_field(name: &str) -> [u8; 32] {
    let mut f = [0u8; 32];
    f[..name.len()].copy_from_slice(name.as_bytes());
    f
}

/// A received rpmsg message as the fake peer parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub src: u32,
    pub dst: u32,
    pub payload: Vec<u8>,
}

impl Msg {
    /// `(name, addr, flags)` if this is a name-service message.
    pub fn ns(&self) -> Option<(String, u32, u32)> {
        if self.dst != NS || self.payload.len() != 40 {
            return None;
        }
        let end = self.payload[..32].iter().position(|&b| b == 0)?;
        Some((
            String::from_utf8(self.payload[..end].to_vec()).ok()?,
            u32::from_le_bytes(self.payload[32..36].try_into().unwrap()),
            u32::from_le_bytes(self.payload[36..40].try_into().unwrap()),
        ))
    }
}

fn read_msg(r: &Region, off: usize, avail: usize) -> Option<Msg> {
    let mut h = [0u8; 16];
    if avail < 16 {
        return None;
    }
    r.read_bytes(off, &mut h).ok()?;
    let len = usize::from(u16::from_le_bytes([h[12], h[13]])).min(avail - 16);
    let mut payload = vec![0u8; len];
    r.read_bytes(off + 16, &mut payload).ok()?;
    Some(Msg {
        src: u32::from_le_bytes(h[0..4].try_into().unwrap()),
        dst: u32::from_le_bytes(h[4..8].try_into().unwrap()),
        payload,
    })
}

// ------------------------------------------------------------ fake device

/// The virtio device end of the rpmsg vdev, played by hand (our side is the
/// driver). vring0 carries the driver's RX buffers (we fill them), vring1
/// its TX buffers (we read them).
pub struct FakeDevice {
    pub r: Region,
    pub map: TableMap,
    pub v0: RawRing,
    pub v1: RawRing,
    pub last_avail: [u16; 2],
    pub used: [u16; 2],
}

impl FakeDevice {
    /// Attaches to the rings the master placed (after its DRIVER_OK).
    pub fn attach(r: &Region) -> FakeDevice {
        let map = TableMap::read(r);
        assert_ne!(r.read_u8(map.status()).unwrap() & S_DRIVER_OK, 0);
        FakeDevice {
            r: r.clone(),
            v0: RawRing::from_table(r, map.vring(0)),
            v1: RawRing::from_table(r, map.vring(1)),
            map,
            last_avail: [0; 2],
            used: [0; 2],
        }
    }

    pub fn ring(&self, q: usize) -> &RawRing {
        if q == 0 {
            &self.v0
        } else {
            &self.v1
        }
    }

    /// Pops the next available head of vring `q`: (head, region offset, len).
    pub fn pop(&mut self, q: usize) -> Option<(u16, usize, u32)> {
        let ring = self.ring(q).clone();
        if ring.avail_idx() == self.last_avail[q] {
            return None;
        }
        let head = ring.avail_entry(self.last_avail[q]);
        self.last_avail[q] = self.last_avail[q].wrapping_add(1);
        let (addr, len, _, _) = ring.read_desc(head);
        Some((head, (addr - BASE_PA) as usize, len))
    }

    /// Publishes a used entry on vring `q` (raw: any id, any length).
    pub fn push_used(&mut self, q: usize, id: u32, len: u32) {
        let ring = self.ring(q).clone();
        ring.set_used_elem(self.used[q], id, len);
        self.used[q] = self.used[q].wrapping_add(1);
        ring.set_used_idx(self.used[q]);
    }

    /// Writes `bytes` into the next RX buffer of the driver and returns it
    /// with `used_len` (None: the byte count). Returns the head used.
    pub fn send_raw(&mut self, bytes: &[u8], used_len: Option<u32>) -> u16 {
        let (head, off, len) = self.pop(0).expect("the driver posted an RX buffer");
        assert!(bytes.len() <= len as usize);
        self.r.write_bytes(off, bytes).unwrap();
        self.push_used(0, u32::from(head), used_len.unwrap_or(bytes.len() as u32));
        head
    }

    pub fn send(&mut self, src: u32, dst: u32, payload: &[u8]) -> u16 {
        self.send_raw(&message(src, dst, payload), None)
    }

    /// A name-service message with a raw name field.
    pub fn ns(&mut self, name: &[u8; 32], addr: u32, flags: u32) {
        self.send(addr, NS, &ns_payload(name, addr, flags));
    }

    /// Reads every message the driver sent and returns its buffers.
    pub fn drain(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some((head, off, len)) = self.pop(1) {
            if let Some(m) = read_msg(&self.r, off, len as usize) {
                out.push(m);
            }
            self.push_used(1, u32::from(head), 0);
        }
        out
    }

    /// Reads the driver's messages but keeps their buffers (a peer that
    /// stops returning buffers).
    pub fn drain_and_keep(&mut self) -> Vec<(u16, Msg)> {
        let mut out = Vec::new();
        while let Some((head, off, len)) = self.pop(1) {
            if let Some(m) = read_msg(&self.r, off, len as usize) {
                out.push((head, m));
            }
        }
        out
    }

    /// The spans only the device may write: both used rings.
    pub fn own_spans(&self) -> Vec<(usize, usize)> {
        vec![self.v0.device_area(), self.v1.device_area()]
    }
}

// ------------------------------------------------------------ fake driver

/// The virtio driver end of the rpmsg vdev, played by hand (our side is the
/// device). Buffers: 8 RX (device-writable, vring0) then 8 TX (vring1) from
/// the front of the pool the master left after the vrings.
pub struct FakeDriver {
    pub r: Region,
    pub map: TableMap,
    pub v0: RawRing,
    pub v1: RawRing,
    pub avail: [u16; 2],
    pub last_used: [u16; 2],
    pub rx_buf: usize,
    pub tx_buf: usize,
    pub tx_free: Vec<u16>,
    pub buf_len: u32,
}

impl FakeDriver {
    /// Negotiates (accepts `features`), posts 8 RX buffers of `buf_len` and
    /// sets DRIVER_OK.
    pub fn boot(r: &Region, pool: usize, features: u32, buf_len: u32) -> FakeDriver {
        let map = TableMap::read(r);
        r.write_u8(map.status(), 0).unwrap();
        r.write_u8(map.status(), S_ACK | S_DRIVER).unwrap();
        r.write_u32(map.gfeatures(), features).unwrap();
        let mut d = FakeDriver {
            r: r.clone(),
            v0: RawRing::from_table(r, map.vring(0)),
            v1: RawRing::from_table(r, map.vring(1)),
            map,
            avail: [0; 2],
            last_used: [0; 2],
            rx_buf: pool,
            tx_buf: pool + 8 * buf_len as usize,
            tx_free: (0..8).rev().collect(),
            buf_len,
        };
        for ring in [&d.v0, &d.v1] {
            r.fill(
                ring.desc,
                ring.used + 6 + 8 * usize::from(NUM) - ring.desc,
                0,
            )
            .unwrap();
        }
        for i in 0..8u16 {
            d.v0.set_desc(i, pa(d.rx(i)), buf_len, DESC_F_WRITE, 0);
            d.post(0, i);
        }
        r.write_u8(map.status(), S_ACK | S_DRIVER | S_DRIVER_OK)
            .unwrap();
        d
    }

    pub fn rx(&self, i: u16) -> usize {
        self.rx_buf + usize::from(i) * self.buf_len as usize
    }

    pub fn tx(&self, i: u16) -> usize {
        self.tx_buf + usize::from(i) * self.buf_len as usize
    }

    pub fn ring(&self, q: usize) -> &RawRing {
        if q == 0 {
            &self.v0
        } else {
            &self.v1
        }
    }

    /// Makes `head` available on vring `q` (raw: any head).
    pub fn post(&mut self, q: usize, head: u16) {
        let ring = self.ring(q).clone();
        ring.set_avail_entry(self.avail[q], head);
        self.avail[q] = self.avail[q].wrapping_add(1);
        ring.set_avail_idx(self.avail[q]);
    }

    /// Sends `bytes` in a TX buffer whose descriptor says `desc_len`
    /// (None: the byte count).
    pub fn send_raw(&mut self, bytes: &[u8], desc_len: Option<u32>) -> u16 {
        self.reap_tx();
        let i = self.tx_free.pop().expect("a free TX buffer");
        self.r.write_bytes(self.tx(i), bytes).unwrap();
        self.v1.set_desc(
            i,
            pa(self.tx(i)),
            desc_len.unwrap_or(bytes.len() as u32),
            0,
            0,
        );
        self.post(1, i);
        i
    }

    pub fn send(&mut self, src: u32, dst: u32, payload: &[u8]) -> u16 {
        self.send_raw(&message(src, dst, payload), None)
    }

    pub fn ns(&mut self, name: &[u8; 32], addr: u32, flags: u32) {
        self.send(addr, NS, &ns_payload(name, addr, flags));
    }

    /// Collects TX buffers the device returned.
    pub fn reap_tx(&mut self) -> usize {
        let mut n = 0;
        while self.last_used[1] != self.v1.used_idx() {
            let (id, _) = self.v1.used_elem(self.last_used[1]);
            self.last_used[1] = self.last_used[1].wrapping_add(1);
            assert!(id < 8 && !self.tx_free.contains(&(id as u16)));
            self.tx_free.push(id as u16);
            n += 1;
        }
        n
    }

    /// Reads every message the device sent and re-posts the buffers.
    pub fn recv(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        while self.last_used[0] != self.v0.used_idx() {
            let (id, len) = self.v0.used_elem(self.last_used[0]);
            self.last_used[0] = self.last_used[0].wrapping_add(1);
            let id = id as u16;
            assert!(id < 8, "the device returned head {id}");
            if let Some(m) = read_msg(&self.r, self.rx(id), len as usize) {
                out.push(m);
            }
            self.post(0, id);
        }
        out
    }

    /// The spans only the driver may write: descriptor tables and avail
    /// rings, and the TX buffers (the device only reads them).
    pub fn own_spans(&self) -> Vec<(usize, usize)> {
        vec![
            self.v0.driver_area(),
            self.v1.driver_area(),
            (self.tx_buf, 8 * self.buf_len as usize),
        ]
    }
}

// ------------------------------------------------------------ checksums

/// FNV-1a over spans of the region.
pub fn fnv(r: &Region, spans: &[(usize, usize)]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &(off, len) in spans {
        let mut b = vec![0u8; len];
        r.read_bytes(off, &mut b).unwrap();
        for x in b {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Memory our side must not write, checksummed before the peer's garbage
/// is processed and checked after.
pub struct Untouched {
    r: Region,
    spans: Vec<(usize, usize)>,
    sum: u64,
}

impl Untouched {
    pub fn new(r: &Region, spans: Vec<(usize, usize)>) -> Untouched {
        Untouched {
            sum: fnv(r, &spans),
            r: r.clone(),
            spans,
        }
    }
    pub fn check(&self, what: &str) {
        assert_eq!(
            fnv(&self.r, &self.spans),
            self.sum,
            "our side wrote into memory it does not own ({what})"
        );
    }
}

/// Fills the guard area with a pattern.
pub fn fill_guard(r: &Region) {
    for i in (GUARD..REGION_LEN).step_by(4) {
        r.write_u32(i, 0xDEAD_0000 | (i as u32 & 0xffff)).unwrap();
    }
}

// ------------------------------------------------------------ rigs

pub fn driver_opts() -> RpmsgVirtioOptions {
    RpmsgVirtioOptions::new(
        LocalCpu::new("server").unwrap(),
        RemoteCpu::new("proxy").unwrap(),
    )
}

pub fn device_opts() -> RpmsgVirtioOptions {
    RpmsgVirtioOptions::new(
        LocalCpu::new("proxy").unwrap(),
        RemoteCpu::new("server").unwrap(),
    )
}

/// The region with the table written and assigned; returns (master's,
/// remote's) view of the vdev.
pub fn prepared(dfeatures: u32, config: &[u8]) -> (Region, VdevInfo, VdevInfo) {
    let r = Region::new_heap(REGION_LEN);
    fill_guard(&r);
    r.write_bytes(RSC, &table(dfeatures, config)).unwrap();
    let mut scratch = vec![0u8; RSC_MAX];
    let m = assign(&r, loc(), &map(), &mut scratch).unwrap();
    let m = *m.vdev(0).unwrap().as_ref().unwrap();
    let a = adopt(&r, loc(), &map(), &mut scratch).unwrap();
    let a = *a.vdev(0).unwrap().as_ref().unwrap();
    (r, m, a)
}

/// Our side is the driver (master): a link over our started driver, and the
/// fake device attached. `svc` is our endpoint "svc", bound to the fake
/// peer's [`PEER_ADDR`] by its announcement.
pub struct DriverSide {
    pub link: Link<RDrv>,
    pub peer: FakeDevice,
    pub r: Region,
    pub info: VdevInfo,
    pub bell: Bell,
    pub svc: EndpointId,
    pub got: Got,
}

pub fn sink<T: RpmsgTransport + 'static>(got: &Got) -> impl rptun::rpmsg::EndpointHandler<T> {
    let got = got.clone();
    on_message(move |_ctx, msg| got.lock().unwrap().push((msg.src(), msg.to_vec())))
}

pub type Got = Arc<Mutex<Vec<(u32, Vec<u8>)>>>;

/// Creates our "svc" on a driver link and binds it with the fake device.
pub fn bind_as_driver(link: &mut Link<RDrv>, peer: &mut FakeDevice) -> (EndpointId, Got) {
    let got = Got::default();
    let svc = link
        .create_endpoint(EndpointConfig::new("svc"), sink(&got))
        .unwrap();
    // Our announcement goes out; the peer answers with its own CREATE.
    let ann = peer.drain();
    assert_eq!(ann.len(), 1, "{ann:?}");
    assert_eq!(ann[0].ns().unwrap().0, "svc");
    peer.ns(&name_field("svc"), PEER_ADDR, NS_CREATE);
    link.poll().unwrap();
    assert_eq!(link.endpoint(svc).unwrap().dest, PEER_ADDR);
    // CREATE_ACK from us (NS|ACK negotiated).
    peer.drain();
    (svc, got)
}

/// Both ways over a bound driver link: the fake device sends `tag` to our
/// "svc", which gets it; our "svc" sends `tag` back.
pub fn driver_round_trip(
    link: &mut Link<RDrv>,
    peer: &mut FakeDevice,
    svc: EndpointId,
    got: &Got,
    tag: &[u8],
) {
    got.lock().unwrap().clear();
    let addr = link.endpoint(svc).unwrap().addr;
    peer.send(PEER_ADDR, addr, tag);
    link.poll().unwrap();
    assert_eq!(*got.lock().unwrap(), vec![(PEER_ADDR, tag.to_vec())]);
    link.trysend(svc, tag).unwrap();
    let out = peer.drain();
    assert_eq!(out.last().map(|m| m.payload.clone()), Some(tag.to_vec()));
}

/// Creates our "svc" on a device link (up) and binds it with the fake
/// driver.
pub fn bind_as_device(link: &mut Link<RDev>, peer: &mut FakeDriver) -> (EndpointId, Got) {
    let got = Got::default();
    let svc = link
        .create_endpoint(EndpointConfig::new("svc"), sink(&got))
        .unwrap();
    assert!(link.is_up(), "{}", link.dump());
    let ann = peer.recv();
    assert_eq!(ann.len(), 1, "{ann:?}");
    assert_eq!(ann[0].ns().unwrap().0, "svc");
    peer.ns(&name_field("svc"), PEER_ADDR, NS_CREATE);
    link.poll().unwrap();
    assert_eq!(link.endpoint(svc).unwrap().dest, PEER_ADDR);
    peer.recv();
    (svc, got)
}

/// [`driver_round_trip`] for a device link.
pub fn device_round_trip(
    link: &mut Link<RDev>,
    peer: &mut FakeDriver,
    svc: EndpointId,
    got: &Got,
    tag: &[u8],
) {
    got.lock().unwrap().clear();
    let addr = link.endpoint(svc).unwrap().addr;
    peer.send(PEER_ADDR, addr, tag);
    link.poll().unwrap();
    assert_eq!(*got.lock().unwrap(), vec![(PEER_ADDR, tag.to_vec())]);
    link.trysend(svc, tag).unwrap();
    let out = peer.recv();
    assert_eq!(out.last().map(|m| m.payload.clone()), Some(tag.to_vec()));
}

impl DriverSide {
    pub fn new() -> DriverSide {
        Self::with(0xf, &config(BUF as u32, BUF as u32), driver_opts())
    }

    pub fn with(dfeatures: u32, cfg: &[u8], opts: RpmsgVirtioOptions) -> DriverSide {
        let (r, info, _) = prepared(dfeatures, cfg);
        let bell = Bell::default();
        let t = VdevDriver::new(VdevLink::new(r.clone(), map(), info, bell.clone())).unwrap();
        let drv = RDrv::start_new(t, opts).map_err(|(e, _)| e).unwrap();
        let mut link = Link::new(drv);
        link.poll().unwrap();
        assert!(link.is_up());
        let mut peer = FakeDevice::attach(&r);
        let (svc, got) = bind_as_driver(&mut link, &mut peer);
        DriverSide {
            link,
            peer,
            r,
            info,
            bell,
            svc,
            got,
        }
    }

    /// Memory our driver must never write: the used rings, the guard and
    /// the table outside the fields a driver writes (status, gfeatures,
    /// config space).
    pub fn untouched(&self) -> Untouched {
        let m = self.peer.map;
        let mut spans = self.peer.own_spans();
        spans.push((GUARD, GUARD_LEN));
        spans.push((RSC, m.gfeatures() - RSC));
        spans.push((m.config_len(), 4));
        spans.push((m.num_vrings(), m.config() - m.num_vrings()));
        spans.push((m.carveout, 56));
        Untouched::new(&self.r, spans)
    }

    /// The peer sends one message to our "svc"; it must arrive.
    pub fn still_serves(&mut self, tag: &[u8]) {
        self.got.lock().unwrap().clear();
        let addr = self.link.endpoint(self.svc).unwrap().addr;
        self.peer.send(PEER_ADDR, addr, tag);
        self.link.poll().unwrap();
        assert_eq!(
            *self.got.lock().unwrap(),
            vec![(PEER_ADDR, tag.to_vec())],
            "the link still delivers"
        );
        self.link.trysend(self.svc, tag).unwrap();
        let out = self.peer.drain();
        assert_eq!(out.last().map(|m| m.payload.clone()), Some(tag.to_vec()));
    }

    pub fn our_addr(&self) -> u32 {
        self.link.endpoint(self.svc).unwrap().addr
    }
}

impl Default for DriverSide {
    fn default() -> Self {
        Self::new()
    }
}

/// Our side is the device (remote): the fake driver booted the vdev and
/// our device attached. `svc` as in [`DriverSide`].
pub struct DeviceSide {
    pub link: Link<RDev>,
    pub peer: FakeDriver,
    pub r: Region,
    pub info: VdevInfo,
    pub bell: Bell,
    pub svc: EndpointId,
    pub got: Got,
}

impl DeviceSide {
    pub fn new() -> DeviceSide {
        Self::with(0xf, &config(BUF as u32, BUF as u32), 0xf, BUF as u32)
    }

    /// `dfeatures` and config space in the table; the fake driver accepts
    /// `gfeatures` and posts buffers of `buf_len`.
    pub fn with(dfeatures: u32, cfg: &[u8], gfeatures: u32, buf_len: u32) -> DeviceSide {
        let (r, master, info) = prepared(dfeatures, cfg);
        let bell = Bell::default();
        let pool = master.pool.unwrap().offset;
        let peer = FakeDriver::boot(&r, pool, gfeatures, buf_len);
        let t = VdevDevice::new(VdevLink::new(r.clone(), map(), info, bell.clone())).unwrap();
        let mut link = Link::new(RDev::new(t, device_opts()));
        let got = Got::default();
        let _ = link.poll();
        let svc = link
            .create_endpoint(EndpointConfig::new("svc"), sink(&got))
            .unwrap();
        DeviceSide {
            link,
            peer,
            r,
            info,
            bell,
            svc,
            got,
        }
    }

    /// Completes the binding: the peer reads our announcement and answers.
    pub fn bind(&mut self) {
        assert!(self.link.is_up(), "{}", self.link.dump());
        let ann = self.peer.recv();
        assert_eq!(ann.len(), 1, "{ann:?}");
        assert_eq!(ann[0].ns().unwrap().0, "svc");
        self.peer.ns(&name_field("svc"), PEER_ADDR, NS_CREATE);
        self.link.poll().unwrap();
        assert_eq!(self.link.endpoint(self.svc).unwrap().dest, PEER_ADDR);
        self.peer.recv();
    }

    pub fn untouched(&self) -> Untouched {
        let m = self.peer.map;
        let mut spans = self.peer.own_spans();
        spans.push((GUARD, GUARD_LEN));
        // The device writes only the status byte (DEVICE_NEEDS_RESET).
        spans.push((RSC, m.status() - RSC));
        spans.push((m.status() + 1, m.end() - m.status() - 1));
        Untouched::new(&self.r, spans)
    }

    pub fn still_serves(&mut self, tag: &[u8]) {
        self.got.lock().unwrap().clear();
        let addr = self.link.endpoint(self.svc).unwrap().addr;
        self.peer.send(PEER_ADDR, addr, tag);
        self.link.poll().unwrap();
        assert_eq!(
            *self.got.lock().unwrap(),
            vec![(PEER_ADDR, tag.to_vec())],
            "the link still delivers"
        );
        self.link.trysend(self.svc, tag).unwrap();
        let out = self.peer.recv();
        assert_eq!(out.last().map(|m| m.payload.clone()), Some(tag.to_vec()));
    }

    pub fn our_addr(&self) -> u32 {
        self.link.endpoint(self.svc).unwrap().addr
    }
}

impl Default for DeviceSide {
    fn default() -> Self {
        Self::new()
    }
}

// ------------------------------------------------------------ both sides

/// What the message-level cases need from either rig.
pub trait Side {
    /// The peer sends raw rpmsg bytes; `len` overrides the length it
    /// reports (used length from a device, descriptor length from a driver).
    fn peer_send(&mut self, bytes: &[u8], len: Option<u32>);
    /// Polls our link (its errors are returned, not unwrapped).
    fn poll(&mut self) -> Result<rptun::rpmsg::PollSummary, rptun::rpmsg::RpmsgError>;
    fn stats(&self) -> rptun::rpmsg::LinkStats;
    fn dump(&self) -> String;
    fn still_serves(&mut self, tag: &[u8]);
    fn our_addr(&self) -> u32;
    fn untouched(&self) -> Untouched;
    fn delivered(&self) -> Vec<(u32, Vec<u8>)>;
    fn svc_dest(&self) -> u32;
    fn pending(&self) -> usize;
    fn is_up(&self) -> bool;
}

impl Side for DriverSide {
    fn peer_send(&mut self, bytes: &[u8], len: Option<u32>) {
        self.peer.send_raw(bytes, len);
    }
    fn poll(&mut self) -> Result<rptun::rpmsg::PollSummary, rptun::rpmsg::RpmsgError> {
        self.link.poll()
    }
    fn stats(&self) -> rptun::rpmsg::LinkStats {
        self.link.stats()
    }
    fn dump(&self) -> String {
        self.link.dump().to_string()
    }
    fn still_serves(&mut self, tag: &[u8]) {
        DriverSide::still_serves(self, tag)
    }
    fn our_addr(&self) -> u32 {
        DriverSide::our_addr(self)
    }
    fn untouched(&self) -> Untouched {
        DriverSide::untouched(self)
    }
    fn delivered(&self) -> Vec<(u32, Vec<u8>)> {
        self.got.lock().unwrap().clone()
    }
    fn svc_dest(&self) -> u32 {
        self.link.endpoint(self.svc).unwrap().dest
    }
    fn pending(&self) -> usize {
        self.link.pending_announcements().count()
    }
    fn is_up(&self) -> bool {
        self.link.is_up()
    }
}

impl Side for DeviceSide {
    fn peer_send(&mut self, bytes: &[u8], len: Option<u32>) {
        self.peer.send_raw(bytes, len);
    }
    fn poll(&mut self) -> Result<rptun::rpmsg::PollSummary, rptun::rpmsg::RpmsgError> {
        self.link.poll()
    }
    fn stats(&self) -> rptun::rpmsg::LinkStats {
        self.link.stats()
    }
    fn dump(&self) -> String {
        self.link.dump().to_string()
    }
    fn still_serves(&mut self, tag: &[u8]) {
        DeviceSide::still_serves(self, tag)
    }
    fn our_addr(&self) -> u32 {
        DeviceSide::our_addr(self)
    }
    fn untouched(&self) -> Untouched {
        DeviceSide::untouched(self)
    }
    fn delivered(&self) -> Vec<(u32, Vec<u8>)> {
        self.got.lock().unwrap().clone()
    }
    fn svc_dest(&self) -> u32 {
        self.link.endpoint(self.svc).unwrap().dest
    }
    fn pending(&self) -> usize {
        self.link.pending_announcements().count()
    }
    fn is_up(&self) -> bool {
        self.link.is_up()
    }
}

/// Both rigs, bound and serving.
pub fn both_sides() -> Vec<Box<dyn Side>> {
    let mut dev = DeviceSide::new();
    dev.bind();
    vec![Box::new(DriverSide::new()), Box::new(dev)]
}

// ------------------------------------------------------------ instances

use rptun::remoteproc::instance::{Event, Instance};
use rptun::remoteproc::platform::Platform;
use rptun::remoteproc::registry::{Registry, VirtioHandler};
use rptun::virtio::VirtioError;

/// A platform over the test region: the master writes [`table`] at [`RSC`]
/// on every start; the remote expects it there.
pub struct TestPlatform {
    pub master: bool,
    pub region: Region,
    pub bell: Bell,
}

impl Platform for TestPlatform {
    type Notifier = Bell;

    fn remote_cpu(&self) -> rptun::remoteproc::platform::RemoteCpuName {
        rptun::remoteproc::platform::RemoteCpuName::new(if self.master {
            "proxy"
        } else {
            "server"
        })
        .unwrap()
    }
    fn is_master(&self) -> bool {
        self.master
    }
    fn region(&self) -> Region {
        self.region.clone()
    }
    fn resource_table(&mut self) -> Result<TableLocation, PlatformError> {
        if self.master {
            self.region.fill(RSC, RSC_MAX, 0).unwrap();
            self.region
                .write_bytes(RSC, &table(0xf, &config(BUF as u32, BUF as u32)))
                .unwrap();
        }
        Ok(loc())
    }
    fn address_map(&self) -> Result<LinkMap, PlatformError> {
        Ok(map())
    }
    fn start(&mut self) -> Result<(), PlatformError> {
        Ok(())
    }
    fn stop(&mut self) -> Result<(), PlatformError> {
        Ok(())
    }
    fn notifier(&self) -> Bell {
        self.bell.clone()
    }
}

/// A link shared between its vdev handler (inside the instance) and the
/// test; `None` once the instance removed the handler.
pub type Shared<T> = Arc<Mutex<Option<Link<T>>>>;

/// The rpmsg link as a vdev handler: every doorbell polls it.
pub struct RpmsgHandler<T: RpmsgTransport + 'static>(pub Shared<T>);

impl<T: RpmsgTransport + Send + 'static> VirtioHandler for RpmsgHandler<T> {
    fn notify(&mut self, _queue: u16) {
        self.poll();
    }
    fn poll(&mut self) {
        if let Some(l) = self.0.lock().unwrap().as_mut() {
            // Errors are counted by the link and the transport.
            let _ = l.poll();
        }
    }
    fn remove(&mut self) {
        self.0.lock().unwrap().take();
    }
}

fn rpmsg_error(e: rptun::rpmsg::virtio::RpmsgVirtioError) -> VirtioError {
    match e {
        rptun::rpmsg::virtio::RpmsgVirtioError::Virtio(v) => v,
        _ => VirtioError::Protocol("rpmsg-virtio could not start (see the log)"),
    }
}

/// A registry that runs our rpmsg driver or device on rpmsg vdevs and puts
/// each new link in `drv` / `dev`.
pub fn rpmsg_registry(drv: Shared<RDrv>, dev: Shared<RDev>) -> Registry<Bell> {
    let mut reg = Registry::new();
    reg.register_driver(rptun::virtio::id::RPMSG, move |t| {
        let d = RDrv::start_new(t, driver_opts()).map_err(|(e, _)| rpmsg_error(e))?;
        *drv.lock().unwrap() = Some(Link::new(d));
        Ok(Box::new(RpmsgHandler(drv.clone())) as Box<dyn VirtioHandler>)
    });
    reg.register_device(rptun::virtio::id::RPMSG, move |t| {
        *dev.lock().unwrap() = Some(Link::new(RDev::new(t, device_opts())));
        Ok(Box::new(RpmsgHandler(dev.clone())) as Box<dyn VirtioHandler>)
    });
    reg
}

/// Our side is a whole remoteproc instance (master: the vdev's driver;
/// remote: its device) and the fake peer plays the other end.
pub struct InstanceSide {
    pub inst: Instance<TestPlatform>,
    pub drv: Shared<RDrv>,
    pub dev: Shared<RDev>,
    pub events: Arc<Mutex<Vec<Event>>>,
    pub r: Region,
    pub bell: Bell,
}

impl InstanceSide {
    pub fn new(master: bool, r: &Region) -> InstanceSide {
        let bell = Bell::default();
        let (drv, dev) = (Shared::default(), Shared::default());
        let mut inst = Instance::new(
            TestPlatform {
                master,
                region: r.clone(),
                bell: bell.clone(),
            },
            rpmsg_registry(drv.clone(), dev.clone()),
        );
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        inst.set_event_handler(move |e| ev.lock().unwrap().push(*e));
        InstanceSide {
            inst,
            drv,
            dev,
            events,
            r: r.clone(),
            bell,
        }
    }

    /// Polls the instance as the platform's periodic poller would.
    pub fn doorbell(&mut self) {
        self.inst.handle_doorbell(Doorbell::All);
    }
}
