//! Carveout allocator driven by an arbitrary operation sequence and checked
//! against a simple model (a list of live blocks).
//!
//! Promises checked after every operation: live blocks lie inside the
//! carveout, do not overlap and are sorted; every allocation is aligned on
//! its physical address; allocation is first fit, so it returns the lowest
//! offset that can hold the request and fails only when no offset can (or
//! the table is full); reserve, free, stats and `pa_of` agree with the model.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rptun::remoteproc::carveout::{Block, Carveout, CarveoutError};

/// Table capacity: small, so that `TableFull` is reached.
const N: usize = 8;

#[derive(Arbitrary, Debug)]
enum Align {
    Pow(u8),
    Raw(usize),
}

impl Align {
    fn get(&self) -> usize {
        match *self {
            Align::Pow(p) => 1usize << (p % usize::BITS as u8),
            Align::Raw(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc { size: u16, align: Align },
    AllocHuge { size: usize, align: Align },
    Reserve { rel: i32, len: u16 },
    ReserveRaw { offset: usize, len: usize },
    FreeNth(u8),
    FreeAt { rel: i32 },
    Reset,
    PaOf { rel: i32 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    start: usize,
    len: u32,
    pa_start: u64,
    /// Use `start`/`len`/`pa_start` near the limits as given instead of
    /// folding them into ordinary ranges.
    raw_geometry: bool,
    ops: Vec<Op>,
}

struct Model {
    start: usize,
    len: usize,
    pa_start: u64,
    blocks: Vec<Block>,
}

impl Model {
    fn end(&self) -> usize {
        self.start + self.len
    }

    /// Physical address of `off` (may be 2^64 for the end of a carveout
    /// at the top of the space).
    fn pa(&self, off: usize) -> u128 {
        u128::from(self.pa_start) + (off - self.start) as u128
    }

    fn gaps(&self) -> Vec<(usize, usize)> {
        let mut b = self.blocks.clone();
        b.sort_by_key(|b| b.offset);
        let mut out = Vec::new();
        let mut cur = self.start;
        for blk in &b {
            out.push((cur, blk.offset));
            cur = blk.offset + blk.len;
        }
        out.push((cur, self.end()));
        out
    }

    /// Lowest offset whose physical address is a multiple of `align` and
    /// that has `size` free bytes.
    fn first_fit(&self, size: usize, align: usize) -> Option<usize> {
        for (g0, g1) in self.gaps() {
            let pa0 = self.pa(g0);
            let a = align as u128;
            let aligned = pa0.div_ceil(a) * a;
            let off = g0 as u128 + (aligned - pa0);
            if off + size as u128 <= g1 as u128 {
                return Some(off as usize);
            }
        }
        None
    }

    fn overlaps(&self, off: usize, len: usize) -> bool {
        self.blocks
            .iter()
            .any(|b| off < b.offset + b.len && b.offset < off + len)
    }

    fn used(&self) -> usize {
        self.blocks.iter().map(|b| b.len).sum()
    }
}

fn check<const M: usize>(c: &Carveout<M>, m: &Model) {
    let live = c.allocations();
    let mut want = m.blocks.clone();
    want.sort_by_key(|b| b.offset);
    assert_eq!(live, &want[..]);
    for w in live.windows(2) {
        assert!(w[0].offset + w[0].len <= w[1].offset);
    }
    for b in live {
        assert!(b.len > 0 && b.offset >= c.start() && b.offset + b.len <= c.end());
    }
    let s = c.stats();
    assert_eq!(s.total, m.len);
    assert_eq!(s.used, m.used());
    assert_eq!(s.free, m.len - m.used());
    assert_eq!(s.allocations, m.blocks.len());
    let largest = m.gaps().iter().map(|(a, b)| b - a).max().unwrap_or(0);
    assert_eq!(s.largest_free, largest);
}

fn at(m: &Model, rel: i32) -> usize {
    // offsets around the carveout, a little outside it too
    (m.start as i128 + i128::from(rel)).clamp(0, usize::MAX as i128) as usize
}

fuzz_target!(|input: Input| {
    let (start, len, pa_start) = if input.raw_geometry {
        (input.start, input.len as usize, input.pa_start)
    } else {
        (
            input.start % 0x10_0000,
            (input.len % 0x1_0000) as usize,
            input.pa_start,
        )
    };
    let created = Carveout::<N>::new(start, len, pa_start);
    let fits =
        start.checked_add(len).is_some() && u128::from(pa_start) + len as u128 <= 1u128 << 64;
    let mut c = match created {
        Ok(c) => {
            assert!(fits);
            c
        }
        Err(e) => {
            assert!(!fits);
            assert_eq!(e, CarveoutError::OutOfRange { offset: start, len });
            return;
        }
    };
    assert_eq!(
        (c.start(), c.len(), c.end(), c.is_empty()),
        (start, len, start + len, len == 0)
    );
    let mut m = Model {
        start,
        len,
        pa_start,
        blocks: Vec::new(),
    };
    for op in input.ops.iter().take(256) {
        match op {
            Op::Alloc { .. } | Op::AllocHuge { .. } => {
                let (size, align) = match op {
                    Op::Alloc { size, align } => (usize::from(*size), align.get()),
                    Op::AllocHuge { size, align } => (*size, align.get()),
                    _ => unreachable!(),
                };
                let r = c.alloc(size, align);
                if size == 0 {
                    assert_eq!(r, Err(CarveoutError::ZeroSize));
                } else if !align.is_power_of_two() {
                    assert_eq!(r, Err(CarveoutError::BadAlign { align }));
                } else if m.blocks.len() == N {
                    assert_eq!(r, Err(CarveoutError::TableFull { capacity: N }));
                } else {
                    match (r, m.first_fit(size, align)) {
                        (Ok(off), Some(want)) => {
                            assert_eq!(off, want, "not first fit");
                            assert!(off >= start && off + size <= m.end());
                            assert!(!m.overlaps(off, size));
                            let pa = c.pa_of(off).unwrap();
                            assert_eq!(pa % align as u64, 0, "misaligned physical address");
                            m.blocks.push(Block {
                                offset: off,
                                len: size,
                            });
                        }
                        (
                            Err(CarveoutError::OutOfMemory {
                                size: s,
                                align: a,
                                free,
                                largest_free,
                            }),
                            None,
                        ) => {
                            assert_eq!((s, a), (size, align));
                            assert_eq!(free, m.len - m.used());
                            assert_eq!(largest_free, c.stats().largest_free);
                        }
                        (r, want) => panic!("alloc({size}, {align}) = {r:?}, model {want:?}"),
                    }
                }
            }
            Op::Reserve { .. } | Op::ReserveRaw { .. } => {
                let (off, l) = match op {
                    Op::Reserve { rel, len } => (at(&m, *rel), usize::from(*len)),
                    Op::ReserveRaw { offset, len } => (*offset, *len),
                    _ => unreachable!(),
                };
                let r = c.reserve(off, l);
                let inside = off >= start && off.checked_add(l).is_some_and(|e| e <= m.end());
                let want = if l == 0 {
                    Err(CarveoutError::ZeroSize)
                } else if !inside {
                    Err(CarveoutError::OutOfRange {
                        offset: off,
                        len: l,
                    })
                } else if m.overlaps(off, l) {
                    Err(CarveoutError::NotFree {
                        offset: off,
                        len: l,
                    })
                } else if m.blocks.len() == N {
                    Err(CarveoutError::TableFull { capacity: N })
                } else {
                    m.blocks.push(Block {
                        offset: off,
                        len: l,
                    });
                    Ok(())
                };
                assert_eq!(r, want);
            }
            Op::FreeNth(i) => {
                if m.blocks.is_empty() {
                    continue;
                }
                let b = m.blocks.swap_remove(usize::from(*i) % m.blocks.len());
                assert_eq!(c.free(b.offset), Ok(b.len));
                assert_eq!(
                    c.free(b.offset),
                    Err(CarveoutError::NotAllocated { offset: b.offset })
                );
            }
            Op::FreeAt { rel } => {
                let off = at(&m, *rel);
                match m.blocks.iter().position(|b| b.offset == off) {
                    Some(i) => {
                        let b = m.blocks.swap_remove(i);
                        assert_eq!(c.free(off), Ok(b.len));
                    }
                    None => assert_eq!(
                        c.free(off),
                        Err(CarveoutError::NotAllocated { offset: off })
                    ),
                }
            }
            Op::Reset => {
                c.reset();
                m.blocks.clear();
            }
            Op::PaOf { rel } => {
                let off = at(&m, *rel);
                let want = if off < start || off > m.end() {
                    None
                } else {
                    pa_start.checked_add((off - start) as u64)
                };
                assert_eq!(c.pa_of(off).ok(), want);
            }
        }
        check(&c, &m);
    }
});
