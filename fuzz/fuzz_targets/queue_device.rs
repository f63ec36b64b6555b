//! Device side of a split virtqueue against a hostile driver.
//!
//! The fuzzer plays the driver: it writes the driver-owned parts of the ring
//! (descriptor table, avail ring, `used_event`) in a heap region, in any
//! order and with any values, and interleaves the device's calls (`pop`,
//! `push_used`, notification handling, reading and writing popped chains).
//!
//! Checked after every call:
//! - `pop` returns exactly what a reference walk of the ring (DESIGN.md §8:
//!   copy, validate, bound the walk by the queue size) says: nothing, a
//!   chain whose buffers all lie inside the window (readable ones first), or
//!   an error that breaks the queue, after which every call fails with
//!   `Broken`;
//! - the device writes only the used ring and, through `write_at`, the
//!   writable buffers of a chain it holds: never the driver-owned memory,
//!   never outside the ring and the window;
//! - `push_used` writes the used element and `used.idx`, and refuses heads
//!   that are not in flight without breaking the queue;
//! - `read_at`/`write_at` move exactly the bytes of the chain's buffers.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rptun::shm::Region;
use rptun::virtio::queue::{
    Chain, DeviceQueue, QueueError, QueueLayout, Seg, Window, DESC_SIZE, VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};

const LEN: usize = 0x1800;
const PA: u64 = 0x4000_0000;
/// Buffers live in `[WIN_OFF, LEN)`, physical `WIN_PA..`.
const WIN_OFF: usize = 0x1000;
const WIN_LEN: usize = LEN - WIN_OFF;
const WIN_PA: u64 = 0x8000_0000;

#[derive(Arbitrary, Debug)]
enum Addr {
    /// Inside (or just past) the window.
    Win(u16),
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Desc {
        i: u8,
        addr: Addr,
        len: u16,
        big_len: bool,
        flags: u8,
        next: u8,
        raw_next: Option<u16>,
    },
    AvailEntry {
        slot: u8,
        head: u16,
    },
    /// The driver publishes `delta` more entries.
    Publish {
        delta: u8,
    },
    AvailIdxRaw(u16),
    AvailFlags(u16),
    UsedEvent(u16),
    /// Raw bytes anywhere in the driver-owned part of the ring.
    Scribble {
        at: u16,
        bytes: [u8; 4],
    },
    Pop {
        small: bool,
    },
    PushUsed {
        pick: u8,
        written: u32,
    },
    PushUsedRaw {
        head: u16,
        written: u32,
    },
    ShouldNotify,
    Enable,
    Disable,
    HasAvail,
    Read {
        pick: u8,
        pos: u16,
        len: u16,
    },
    Write {
        pick: u8,
        pos: u16,
        len: u16,
        byte: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    num_log2: u8,
    align_log2: u8,
    /// Ring start: PA + 2 * pa_shift (the used ring's alignment is of the
    /// absolute address).
    pa_shift: u8,
    event_idx: bool,
    ops: Vec<Op>,
}

fn snapshot(r: &Region) -> Vec<u8> {
    let mut v = vec![0; r.len()];
    r.read_bytes(0, &mut v).unwrap();
    v
}

fn u16_at(m: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([m[at], m[at + 1]])
}

/// Reference chain walk over a memory snapshot.
fn reference_walk(
    m: &[u8],
    l: &QueueLayout,
    w: &Window,
    last_avail: u16,
    max: usize,
) -> Option<(u16, Vec<Seg>)> {
    let num = l.num;
    let head = u16_at(m, l.avail_ring(last_avail & (num - 1)));
    if head >= num {
        return None;
    }
    let mut segs: Vec<Seg> = Vec::new();
    let mut idx = head;
    for _ in 0..num {
        let d = &m[l.desc_at(idx)..l.desc_at(idx) + DESC_SIZE];
        let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
        let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
        let flags = u16::from_le_bytes([d[12], d[13]]);
        let next = u16::from_le_bytes([d[14], d[15]]);
        if flags & VRING_DESC_F_INDIRECT != 0 {
            return None;
        }
        let writable = flags & VRING_DESC_F_WRITE != 0;
        if !writable && segs.iter().any(|s| s.writable) {
            return None;
        }
        // Inside the window, computed in u128: no overflow possible.
        let rel = u128::from(addr).checked_sub(u128::from(w.pa))?;
        if rel + u128::from(len) > w.len as u128 {
            return None;
        }
        if segs.len() == max {
            return None;
        }
        segs.push(Seg {
            offset: w.offset + rel as usize,
            len,
            writable,
        });
        if flags & VRING_DESC_F_NEXT == 0 {
            return Some((head, segs));
        }
        if next >= num {
            return None;
        }
        idx = next;
    }
    None // loops
}

/// A popped chain, of either capacity.
#[derive(Debug)]
enum Held {
    Small(Chain<4>),
    Big(Chain<16>),
}

impl Held {
    fn head(&self) -> u16 {
        match self {
            Held::Small(c) => c.head(),
            Held::Big(c) => c.head(),
        }
    }
    fn readable(&self) -> &[Seg] {
        match self {
            Held::Small(c) => c.readable(),
            Held::Big(c) => c.readable(),
        }
    }
    fn writable(&self) -> &[Seg] {
        match self {
            Held::Small(c) => c.writable(),
            Held::Big(c) => c.writable(),
        }
    }
    fn read_at(&self, r: &Region, pos: u64, dst: &mut [u8]) -> Result<usize, QueueError> {
        match self {
            Held::Small(c) => c.read_at(r, pos, dst),
            Held::Big(c) => c.read_at(r, pos, dst),
        }
    }
    fn write_at(&self, r: &Region, pos: u64, src: &[u8]) -> Result<usize, QueueError> {
        match self {
            Held::Small(c) => c.write_at(r, pos, src),
            Held::Big(c) => c.write_at(r, pos, src),
        }
    }
}

fn check_chain<const M: usize>(c: &Chain<M>, max: usize, w: &Window) {
    assert!(c.len() <= max.min(M) && !c.is_empty());
    let segs = c.segs();
    assert_eq!(c.readable().len() + c.writable().len(), segs.len());
    assert!(c.readable().iter().all(|s| !s.writable));
    assert!(c.writable().iter().all(|s| s.writable));
    for s in segs {
        assert!(s.offset >= w.offset && s.offset + s.len as usize <= w.offset + w.len);
    }
    let r: u64 = c.readable().iter().map(|s| u64::from(s.len)).sum();
    let wr: u64 = c.writable().iter().map(|s| u64::from(s.len)).sum();
    assert_eq!((c.readable_len(), c.writable_len()), (r, wr));
}

/// The bytes `pos..pos+n` of a list of segments, as (region offset, len)
/// pieces in order.
fn pieces(segs: &[Seg], pos: u64, n: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut skip = pos;
    let mut left = n;
    for s in segs {
        if left == 0 {
            break;
        }
        let len = u64::from(s.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let take = ((len - skip) as usize).min(left);
        out.push((s.offset + skip as usize, take));
        left -= take;
        skip = 0;
    }
    out
}

fuzz_target!(|input: Input| {
    let num = 1u16 << (input.num_log2 % 6); // 1..=32
    let align = 1u32 << (2 + input.align_log2 % 10); // 4..=2048
    let pa = PA + 2 * u64::from(input.pa_shift);
    let event_idx = input.event_idx;
    let region = Region::new_heap(LEN);
    let l = QueueLayout::legacy(0, pa, num, align).unwrap();
    let w = Window::new(WIN_PA, WIN_OFF, WIN_LEN);
    // Start from some plausible garbage in the buffers.
    region.fill(WIN_OFF, WIN_LEN, 0xEE).unwrap();
    let mut dev = DeviceQueue::new(region.clone(), l, w, event_idx).unwrap();
    assert_eq!(dev.num(), num);

    let n = usize::from(num);
    let used_end = l.used + 4 + 8 * n + 2;
    assert!(used_end <= WIN_OFF);
    // Driver-owned: descriptor table and avail ring (used_event included).
    let driver_owned = |i: usize| {
        (l.desc..l.desc + n * DESC_SIZE).contains(&i)
            || (l.avail..l.avail + 4 + 2 * n + 2).contains(&i)
    };
    let used_part = |i: usize| (l.used..used_end).contains(&i);

    let mut avail_idx: u16 = 0;
    let mut held: Vec<Held> = Vec::new();
    let mut broken = false;

    for op in input.ops.iter().take(256) {
        let before = snapshot(&region);
        let idx_before = dev.indices();
        let was_broken = broken;
        let mut expect_mem: Option<Vec<u8>> = None;
        let mut device_call = true;
        let result: Result<(), QueueError> = match op {
            Op::Desc {
                i,
                addr,
                len,
                big_len,
                flags,
                next,
                raw_next,
            } => {
                device_call = false;
                let i = u16::from(*i) % num;
                let o = l.desc_at(i);
                let a = match addr {
                    Addr::Win(off) => WIN_PA + u64::from(*off) % (WIN_LEN as u64 + 0x100),
                    Addr::Raw(v) => *v,
                };
                let len = if *big_len {
                    u32::from(*len) << 16 | 0xffff
                } else {
                    u32::from(*len) % 0x400
                };
                let nx = raw_next.unwrap_or(u16::from(*next) % num);
                region.write_u64(o, a).unwrap();
                region.write_u32(o + 8, len).unwrap();
                region.write_u16(o + 12, u16::from(*flags & 7)).unwrap();
                region.write_u16(o + 14, nx).unwrap();
                Ok(())
            }
            Op::AvailEntry { slot, head } => {
                device_call = false;
                let head = if *head >= 0x8000 { *head } else { *head % num };
                region
                    .write_u16(l.avail_ring(u16::from(*slot) % num), head)
                    .unwrap();
                Ok(())
            }
            Op::Publish { delta } => {
                device_call = false;
                avail_idx = avail_idx.wrapping_add(u16::from(*delta) % (num.max(2) + 2));
                region.store_u16(l.avail_idx(), avail_idx).unwrap();
                Ok(())
            }
            Op::AvailIdxRaw(v) => {
                device_call = false;
                avail_idx = *v;
                region.store_u16(l.avail_idx(), *v).unwrap();
                Ok(())
            }
            Op::AvailFlags(v) => {
                device_call = false;
                region.store_u16(l.avail_flags(), *v).unwrap();
                Ok(())
            }
            Op::UsedEvent(v) => {
                device_call = false;
                region.store_u16(l.used_event(), *v).unwrap();
                Ok(())
            }
            Op::Scribble { at, bytes } => {
                device_call = false;
                let end = l.avail + 4 + 2 * n + 2;
                let at = usize::from(*at) % (end - 3);
                // Not the avail index: that one is what Publish tracks.
                let idx_field = l.avail_idx()..l.avail_idx() + 2;
                if (at..at + 4).all(|b| driver_owned(b) && !idx_field.contains(&b)) {
                    region.write_bytes(at, bytes).unwrap();
                }
                Ok(())
            }
            Op::Pop { small } => {
                let max = if *small { 4 } else { 16 };
                // The reference, from the same snapshot and indices.
                let expect = if broken {
                    Err(())
                } else {
                    let seen = idx_before.avail_idx;
                    let last = idx_before.last_avail;
                    if last == seen {
                        let now = u16_at(&before, l.avail_idx());
                        // More than `num` ahead of what we consumed, or
                        // of the oldest chain not returned (`used.idx`).
                        if now.wrapping_sub(last) > num
                            || now.wrapping_sub(idx_before.used_idx) > num
                        {
                            Err(())
                        } else if now == last {
                            Ok(None)
                        } else {
                            reference_walk(&before, &l, &w, last, max)
                                .map(Some)
                                .ok_or(())
                        }
                    } else {
                        reference_walk(&before, &l, &w, last, max)
                            .map(Some)
                            .ok_or(())
                    }
                };
                let got = if *small {
                    dev.pop::<4>().map(|c| c.map(Held::Small))
                } else {
                    dev.pop::<16>().map(|c| c.map(Held::Big))
                };
                match (got, expect) {
                    (Ok(None), Ok(None)) => Ok(()),
                    (Ok(Some(c)), Ok(Some((head, segs)))) => {
                        assert_eq!(c.head(), head);
                        match &c {
                            Held::Small(ch) => {
                                assert_eq!(ch.segs(), &segs[..]);
                                check_chain(ch, max, &w);
                            }
                            Held::Big(ch) => {
                                assert_eq!(ch.segs(), &segs[..]);
                                check_chain(ch, max, &w);
                            }
                        }
                        held.push(c);
                        Ok(())
                    }
                    (Err(e), Err(())) => {
                        assert!(e == QueueError::Broken || e.breaks_queue(), "{e:?}");
                        Err(e)
                    }
                    (got, want) => panic!("pop = {got:?}, reference {want:?}"),
                }
            }
            Op::PushUsed { pick, written } => {
                if held.is_empty() {
                    continue;
                }
                let h = held.swap_remove(usize::from(*pick) % held.len());
                let r = dev.push_used(h.head(), *written);
                if r.is_ok() {
                    let slot = idx_before.used_idx & (num - 1);
                    let e = l.used_elem(slot);
                    assert_eq!(region.read_u32(e).unwrap(), u32::from(h.head()));
                    assert_eq!(region.read_u32(e + 4).unwrap(), *written);
                    assert_eq!(
                        region.load_u16(l.used_idx()).unwrap(),
                        idx_before.used_idx.wrapping_add(1)
                    );
                }
                r
            }
            Op::PushUsedRaw { head, written } => {
                let r = dev.push_used(*head, *written);
                if !broken && (*head >= num || idx_before.in_flight == 0) {
                    assert_eq!(r, Err(QueueError::NotInFlight { head: *head }));
                }
                if r.is_ok() {
                    // A head the device no longer tracks per chain: forget one
                    // held chain so the in-flight count stays consistent.
                    if !held.is_empty() {
                        held.remove(0);
                    }
                }
                r
            }
            Op::ShouldNotify => dev.should_notify().map(|_| ()),
            Op::Enable => dev.enable_notifications().map(|_| ()),
            Op::Disable => dev.disable_notifications(),
            Op::HasAvail => dev.has_avail().map(|_| ()),
            Op::Read { pick, pos, len } => {
                device_call = false;
                if held.is_empty() {
                    continue;
                }
                let c = &held[usize::from(*pick) % held.len()];
                let mut dst = vec![0u8; usize::from(*len) % 0x800];
                let got = c.read_at(&region, u64::from(*pos), &mut dst).unwrap();
                let ps = pieces(c.readable(), u64::from(*pos), dst.len());
                let want: Vec<u8> = ps
                    .iter()
                    .flat_map(|&(o, n)| before[o..o + n].to_vec())
                    .collect();
                assert_eq!(got, want.len());
                assert_eq!(&dst[..got], &want[..]);
                Ok(())
            }
            Op::Write {
                pick,
                pos,
                len,
                byte,
            } => {
                device_call = false;
                if held.is_empty() {
                    continue;
                }
                let c = &held[usize::from(*pick) % held.len()];
                let src: Vec<u8> = (0..usize::from(*len) % 0x800)
                    .map(|k| byte.wrapping_add(k as u8))
                    .collect();
                let got = c.write_at(&region, u64::from(*pos), &src).unwrap();
                let ps = pieces(c.writable(), u64::from(*pos), src.len());
                let mut model = before.clone();
                let mut k = 0;
                for &(o, n) in &ps {
                    model[o..o + n].copy_from_slice(&src[k..k + n]);
                    k += n;
                }
                assert_eq!(got, k);
                expect_mem = Some(model);
                Ok(())
            }
        };
        if let Err(e) = result {
            if e.breaks_queue() {
                broken = true;
            }
        }
        assert_eq!(dev.is_broken(), broken);
        if broken && device_call {
            assert_eq!(dev.pop::<16>().err(), Some(QueueError::Broken));
            assert_eq!(dev.has_avail(), Err(QueueError::Broken));
            assert_eq!(dev.push_used(0, 0), Err(QueueError::Broken));
            assert_eq!(dev.should_notify(), Err(QueueError::Broken));
        }
        let after = snapshot(&region);
        if let Some(model) = expect_mem {
            assert!(
                model == after,
                "write_at wrote outside the chain's writable buffers"
            );
        } else if device_call {
            for i in 0..LEN {
                if before[i] != after[i] {
                    assert!(
                        used_part(i),
                        "device call {op:?} wrote byte {i:#x} outside the used ring"
                    );
                    assert!(!driver_owned(i));
                }
            }
            if was_broken {
                assert!(before == after, "a broken queue wrote memory");
            }
        }
        // Local bookkeeping stays within the queue size.
        let ix = dev.indices();
        assert!(usize::from(ix.in_flight) <= n);
        assert_eq!(dev.in_flight(), usize::from(ix.in_flight));
        let _ = format!("{ix}");
    }
});
