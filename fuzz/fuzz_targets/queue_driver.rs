//! Driver side of a split virtqueue against a hostile device.
//!
//! The fuzzer plays the device: it writes the device-owned parts of the ring
//! (used ring elements, `used.idx`, `used.flags`, `avail_event`) with any
//! values, scribbles over the driver-owned descriptor table and avail ring
//! (which the driver must never read back), and interleaves the driver's
//! calls (`add`, `publish`, `pop_used`, interrupt handling).
//!
//! Checked after every call, against a model of the chains in flight:
//! - `add` writes exactly the chain asked for (descriptors linked from the
//!   returned head, addresses translated through the window, WRITE flags on
//!   the writable part) and its avail entry; caller mistakes (empty, too
//!   many buffers, full, buffer outside the window) fail without breaking
//!   the queue or writing anything;
//! - `pop_used` returns exactly what the used ring says when it is legal: a
//!   head the device holds (added and published, not yet returned) with a
//!   length no larger than the writable bytes posted (0 when none); any
//!   violation breaks the queue, after which every call fails with `Broken`;
//! - free descriptors and chains in flight always add up;
//! - the driver never writes the device-owned used ring.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rptun::shm::Region;
use rptun::virtio::queue::{
    Buf, DriverQueue, QueueError, QueueLayout, Used, Window, DESC_SIZE, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
};

const N: usize = 32;
const LEN: usize = 0x1800;
const PA: u64 = 0x4000_0000;
const WIN_OFF: usize = 0x1000;
const WIN_LEN: usize = LEN - WIN_OFF;
const WIN_PA: u64 = 0x8000_0000;

#[derive(Arbitrary, Debug)]
enum Id {
    /// One of the chains in flight (published or not).
    Pick(u8),
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
enum Len {
    /// Exactly the writable capacity of the picked chain.
    Cap,
    /// The capacity plus a small delta.
    Over(u8),
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A chain of `nr` readable and `nw` writable buffers from the window.
    Add {
        nr: u8,
        nw: u8,
        at: u16,
        lens: [u8; 4],
    },
    /// A buffer that may lie outside the window.
    AddRaw {
        offset: u16,
        len: u16,
        writable: bool,
    },
    Publish,
    PopUsed,
    HasUsed,
    Enable,
    Disable,
    /// The device writes used element `slot`.
    UsedElem {
        slot: u8,
        id: Id,
        len: Len,
    },
    /// A well-behaved completion: the next used element names a chain in
    /// flight, then `used.idx` moves on.
    Complete {
        id: Id,
        len: Len,
    },
    UsedIdx {
        delta: u8,
    },
    UsedIdxRaw(u16),
    UsedFlags(u16),
    AvailEvent(u16),
    /// The device writes driver-owned memory.
    Scribble {
        at: u16,
        bytes: [u8; 4],
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    num_log2: u8,
    align_log2: u8,
    pa_shift: u8,
    event_idx: bool,
    ops: Vec<Op>,
}

#[derive(Debug, Clone)]
struct Chain {
    head: u16,
    descs: usize,
    cap: u32,
    published: bool,
}

fn snapshot(r: &Region) -> Vec<u8> {
    let mut v = vec![0; r.len()];
    r.read_bytes(0, &mut v).unwrap();
    v
}

fn u16_at(m: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([m[at], m[at + 1]])
}

fn u32_at(m: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(m[at..at + 4].try_into().unwrap())
}

fuzz_target!(|input: Input| {
    let num = 1u16 << (input.num_log2 % 6); // 1..=32
    let n = usize::from(num);
    let align = 1u32 << (2 + input.align_log2 % 10);
    let pa = PA + 2 * u64::from(input.pa_shift);
    let event_idx = input.event_idx;
    let region = Region::new_heap(LEN);
    region.fill(0, LEN, 0xA5).unwrap();
    let l = QueueLayout::legacy(0, pa, num, align).unwrap();
    let w = Window::new(WIN_PA, WIN_OFF, WIN_LEN);
    let mut drv = DriverQueue::<N>::new(region.clone(), l, w, event_idx).unwrap();
    assert_eq!((drv.num(), drv.num_free(), drv.in_flight()), (num, n, 0));
    let used_end = l.used + 4 + 8 * n + 2;
    assert!(used_end <= WIN_OFF);
    // Device-owned: the used ring (avail_event included).
    let device_owned = |i: usize| (l.used..used_end).contains(&i);
    let driver_owned = |i: usize| {
        (l.desc..l.desc + n * DESC_SIZE).contains(&i)
            || (l.avail..l.avail + 4 + 2 * n + 2).contains(&i)
    };

    let mut chains: Vec<Chain> = Vec::new();
    let mut added: u16 = 0; // avail index the next add fills
    let mut used_idx: u16 = 0; // what the fuzzer last wrote
    let mut broken = false;

    let pick_len = |c: Option<&Chain>, len: &Len| -> u32 {
        match (c, len) {
            (Some(c), Len::Cap) => c.cap,
            (Some(c), Len::Over(d)) => c.cap.saturating_add(u32::from(*d)),
            (None, Len::Cap | Len::Over(_)) => 0,
            (_, Len::Raw(v)) => *v,
        }
    };

    for op in input.ops.iter().take(256) {
        let before = snapshot(&region);
        let ix = drv.indices();
        let was_broken = broken;
        let mut driver_call = true;
        let result: Result<(), QueueError> = match op {
            Op::Add { nr, nw, at, lens } => {
                let nr = usize::from(*nr % 5);
                let nw = usize::from(*nw % 5);
                let bufs: Vec<Buf> = (0..nr + nw)
                    .map(|k| {
                        let len = u32::from(lens[k % 4]);
                        let off = (usize::from(*at) + 0x100 * k) % (WIN_LEN - 0x100);
                        Buf::new(WIN_OFF + off, len)
                    })
                    .collect();
                let (r, wr) = bufs.split_at(nr);
                let free = n - chains.iter().map(|c| c.descs).sum::<usize>();
                let res = drv.add(r, wr);
                let total = nr + nw;
                let want_err = if was_broken {
                    Some(QueueError::Broken)
                } else if total == 0 {
                    Some(QueueError::EmptyChain)
                } else if total > n {
                    Some(QueueError::TooManyBufs { count: total, num })
                } else if total > free {
                    Some(QueueError::Full {
                        needed: total,
                        free,
                    })
                } else {
                    None
                };
                match (res, want_err) {
                    (Err(e), Some(want)) => {
                        assert_eq!(e, want);
                        Err(e)
                    }
                    (Ok(head), None) => {
                        assert!(head < num);
                        assert!(chains.iter().all(|c| c.head != head), "head {head} reused");
                        // The chain as written in memory.
                        let mem = snapshot(&region);
                        let mut idx = head;
                        let mut seen = vec![idx];
                        for (k, b) in bufs.iter().enumerate() {
                            let d = l.desc_at(idx);
                            let addr = u64::from_le_bytes(mem[d..d + 8].try_into().unwrap());
                            assert_eq!(addr, WIN_PA + (b.offset - WIN_OFF) as u64);
                            assert_eq!(u32_at(&mem, d + 8), b.len);
                            let flags = u16_at(&mem, d + 12);
                            assert_eq!(flags & VRING_DESC_F_WRITE != 0, k >= nr);
                            let last = k + 1 == bufs.len();
                            assert_eq!(flags & VRING_DESC_F_NEXT == 0, last);
                            if !last {
                                idx = u16_at(&mem, d + 14);
                                assert!(idx < num && !seen.contains(&idx), "bad link");
                                seen.push(idx);
                            }
                        }
                        assert_eq!(u16_at(&mem, l.avail_ring(added & (num - 1))), head);
                        added = added.wrapping_add(1);
                        let cap = wr.iter().fold(0u32, |a, b| a.saturating_add(b.len));
                        chains.push(Chain {
                            head,
                            descs: total,
                            cap,
                            published: false,
                        });
                        Ok(())
                    }
                    (got, want) => panic!("add = {got:?}, expected error {want:?}"),
                }
            }
            Op::AddRaw {
                offset,
                len,
                writable,
            } => {
                let b = [Buf::new(usize::from(*offset), u32::from(*len))];
                let inside = usize::from(*offset) >= WIN_OFF
                    && usize::from(*offset) + usize::from(*len) <= LEN;
                let free = n - chains.iter().map(|c| c.descs).sum::<usize>();
                let res = if *writable {
                    drv.add(&[], &b)
                } else {
                    drv.add(&b, &[])
                };
                match res {
                    Ok(head) => {
                        assert!(!was_broken && inside && free >= 1);
                        added = added.wrapping_add(1);
                        chains.push(Chain {
                            head,
                            descs: 1,
                            cap: if *writable { u32::from(*len) } else { 0 },
                            published: false,
                        });
                        Ok(())
                    }
                    Err(e) => {
                        if !was_broken && free >= 1 {
                            assert!(!inside);
                            assert!(matches!(e, QueueError::OffsetOutOfWindow { .. }));
                        }
                        Err(e)
                    }
                }
            }
            Op::Publish => {
                let r = drv.publish().map(|_| ());
                if r.is_ok() {
                    chains.iter_mut().for_each(|c| c.published = true);
                    // (With nothing new to publish the field is left alone,
                    // whatever the device scribbled there.)
                    if ix.avail_idx != ix.last_avail {
                        assert_eq!(region.load_u16(l.avail_idx()).unwrap(), added);
                    }
                }
                r
            }
            Op::PopUsed => {
                // Reference, from the snapshot and the queue's indices.
                let published: Vec<&Chain> = chains.iter().filter(|c| c.published).collect();
                let expect: Result<Option<Used>, ()> = if was_broken {
                    Err(())
                } else {
                    let reload = ix.last_used == ix.used_idx;
                    let idx = if reload {
                        u16_at(&before, l.used_idx())
                    } else {
                        ix.used_idx
                    };
                    if reload && idx.wrapping_sub(ix.last_used) > published.len() as u16 {
                        Err(())
                    } else if idx == ix.last_used {
                        Ok(None)
                    } else {
                        let e = l.used_elem(ix.last_used & (num - 1));
                        let id = u32_at(&before, e);
                        let len = u32_at(&before, e + 4);
                        match published.iter().find(|c| u32::from(c.head) == id) {
                            None => Err(()),
                            Some(c) if c.cap == 0 => Ok(Some(Used {
                                head: c.head,
                                len: 0,
                            })),
                            Some(c) if len > c.cap => Err(()),
                            Some(c) => Ok(Some(Used { head: c.head, len })),
                        }
                    }
                };
                match (drv.pop_used(), expect) {
                    (Ok(got), Ok(want)) => {
                        assert_eq!(got, want);
                        if let Some(u) = got {
                            let i = chains.iter().position(|c| c.head == u.head).unwrap();
                            chains.remove(i);
                        }
                        Ok(())
                    }
                    (Err(e), Err(())) => {
                        assert!(e == QueueError::Broken || e.breaks_queue(), "{e:?}");
                        Err(e)
                    }
                    (got, want) => panic!("pop_used = {got:?}, reference {want:?}"),
                }
            }
            Op::HasUsed => drv.has_used().map(|_| ()),
            Op::Enable => drv.enable_interrupts().map(|_| ()),
            Op::Disable => drv.disable_interrupts(),
            Op::UsedElem { slot, id, len } => {
                driver_call = false;
                let c = match id {
                    Id::Pick(p) if !chains.is_empty() => {
                        Some(&chains[usize::from(*p) % chains.len()])
                    }
                    _ => None,
                };
                let idv = match (c, id) {
                    (Some(c), _) => u32::from(c.head),
                    (None, Id::Raw(v)) => *v,
                    (None, Id::Pick(p)) => u32::from(*p),
                };
                let e = l.used_elem(u16::from(*slot) % num);
                region.write_u32(e, idv).unwrap();
                region.write_u32(e + 4, pick_len(c, len)).unwrap();
                Ok(())
            }
            Op::Complete { id, len } => {
                driver_call = false;
                let c = match id {
                    Id::Pick(p) if !chains.is_empty() => {
                        Some(&chains[usize::from(*p) % chains.len()])
                    }
                    _ => None,
                };
                let idv = match (c, id) {
                    (Some(c), _) => u32::from(c.head),
                    (None, Id::Raw(v)) => *v,
                    (None, Id::Pick(p)) => u32::from(*p),
                };
                let e = l.used_elem(used_idx & (num - 1));
                region.write_u32(e, idv).unwrap();
                region.write_u32(e + 4, pick_len(c, len)).unwrap();
                used_idx = used_idx.wrapping_add(1);
                region.store_u16(l.used_idx(), used_idx).unwrap();
                Ok(())
            }
            Op::UsedIdx { delta } => {
                driver_call = false;
                used_idx = used_idx.wrapping_add(u16::from(*delta % 4));
                region.store_u16(l.used_idx(), used_idx).unwrap();
                Ok(())
            }
            Op::UsedIdxRaw(v) => {
                driver_call = false;
                used_idx = *v;
                region.store_u16(l.used_idx(), *v).unwrap();
                Ok(())
            }
            Op::UsedFlags(v) => {
                driver_call = false;
                region.store_u16(l.used_flags(), *v).unwrap();
                Ok(())
            }
            Op::AvailEvent(v) => {
                driver_call = false;
                if event_idx {
                    region.store_u16(l.avail_event(), *v).unwrap();
                }
                Ok(())
            }
            Op::Scribble { at, bytes } => {
                driver_call = false;
                let end = l.avail + 4 + 2 * n + 2;
                let at = usize::from(*at) % (end - 3);
                if (at..at + 4).all(driver_owned) {
                    region.write_bytes(at, bytes).unwrap();
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            if e.breaks_queue() {
                broken = true;
            }
        }
        assert_eq!(drv.is_broken(), broken);
        let after = snapshot(&region);
        if driver_call {
            for i in 0..LEN {
                if before[i] != after[i] {
                    assert!(
                        !device_owned(i),
                        "driver call {op:?} wrote the used ring at {i:#x}"
                    );
                    assert!(
                        driver_owned(i),
                        "driver call {op:?} wrote byte {i:#x} outside its ring"
                    );
                }
            }
            if was_broken || result.as_ref().is_err_and(|e| !e.breaks_queue()) {
                assert!(
                    before == after,
                    "a refused call or a broken queue wrote memory"
                );
            }
        }
        if broken {
            assert_eq!(drv.pop_used(), Err(QueueError::Broken));
            assert_eq!(
                drv.add(&[Buf::new(WIN_OFF, 1)], &[]),
                Err(QueueError::Broken)
            );
            assert_eq!(drv.publish(), Err(QueueError::Broken));
        }
        let descs: usize = chains.iter().map(|c| c.descs).sum();
        assert_eq!(drv.num_free(), n - descs);
        assert_eq!(drv.in_flight(), chains.len());
        let _ = format!("{drv:?} {}", drv.indices());
    }
});
