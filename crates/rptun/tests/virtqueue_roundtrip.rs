//! A driver and a device on one heap region, exchanging random chains: every
//! byte is checked on both ends, over wrap-arounds of the 16-bit indices,
//! with out-of-order completion, random notification suppression and the
//! "no lost wake-up" rule checked at every notification decision.

use proptest::prelude::*;
use rptun::shm::Region;
use rptun::virtio::queue::*;

/// Driver shadow capacity (largest `num` used here).
const N: usize = 64;
/// Buffers per chain, at most.
const MAX_SEGS: usize = 6;
/// Bytes per buffer, at most.
const MAX_LEN: usize = 48;
const SLOT: usize = MAX_SEGS * MAX_LEN;
const RING_AREA: usize = 16384;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn rd_byte(serial: u64, k: usize) -> u8 {
    (serial.wrapping_mul(31) as usize + k * 7 + 0x5a) as u8
}

fn wr_byte(serial: u64, k: usize) -> u8 {
    (serial.wrapping_mul(17) as usize + k * 13 + 0xa5) as u8
}

struct Posted {
    serial: u64,
    slot: usize,
    readable: Vec<Buf>,
    writable: Vec<Buf>,
    /// Set by the device when it returns the chain.
    written: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Params {
    num: u16,
    align: u32,
    event_idx: bool,
    ring_off: usize,
    base_pa: u64,
    chains: u64,
    seed: u64,
}

struct Sim {
    r: Region,
    drv: DriverQueue<N>,
    dev: DeviceQueue,
    rng: Rng,
    slots_base: usize,
    free_slots: Vec<usize>,
    posted: Vec<Option<Posted>>,
    held: Vec<(Chain<MAX_SEGS>, u64)>,
    serial: u64,
    device_serial: u64,
    completed: u64,
    /// The device slept: enable_notifications() said nothing was pending and
    /// it has not been woken since.
    dev_sleeping: bool,
    /// Same for the driver and interrupts.
    drv_sleeping: bool,
    /// The device returned a chain while the driver slept: its next
    /// should_notify() must say yes.
    owed_interrupt: bool,
    /// Chains were returned since the last should_notify().
    pushed_since_signal: bool,
    kicks: u64,
    interrupts: u64,
}

impl Sim {
    fn new(p: Params) -> Sim {
        let num = usize::from(p.num);
        let slots_base = RING_AREA;
        let r = Region::new_heap(RING_AREA + num * SLOT);
        let ring_pa = p.base_pa + p.ring_off as u64;
        let l = QueueLayout::legacy(p.ring_off, ring_pa, p.num, p.align).unwrap();
        assert!(
            p.ring_off + QueueLayout::legacy_size(ring_pa, p.num, p.align).unwrap() <= RING_AREA
        );
        let w = Window::new(p.base_pa, 0, r.len());
        let drv = DriverQueue::<N>::new(r.clone(), l, w, p.event_idx).unwrap();
        let dev = DeviceQueue::new(r.clone(), l, w, p.event_idx).unwrap();
        Sim {
            r,
            drv,
            dev,
            rng: Rng(p.seed),
            slots_base,
            free_slots: (0..num).collect(),
            posted: (0..num).map(|_| None).collect(),
            held: Vec::new(),
            serial: 0,
            device_serial: 0,
            completed: 0,
            dev_sleeping: false,
            drv_sleeping: false,
            owed_interrupt: false,
            pushed_since_signal: false,
            kicks: 0,
            interrupts: 0,
        }
    }

    fn driver_add(&mut self) {
        let num = usize::from(self.drv.num());
        let max = MAX_SEGS.min(num).min(self.drv.num_free());
        if max == 0 || self.free_slots.is_empty() {
            return;
        }
        let total = 1 + self.rng.below(max);
        let nr = self.rng.below(total + 1);
        let slot = self.free_slots.pop().unwrap();
        let base = self.slots_base + slot * SLOT;
        let serial = self.serial;
        let mut bufs = Vec::new();
        for j in 0..total {
            // Zero-length buffers now and then.
            let len = if self.rng.below(16) == 0 {
                0
            } else {
                1 + self.rng.below(MAX_LEN)
            };
            bufs.push(Buf::new(base + j * MAX_LEN, len as u32));
        }
        let writable = bufs.split_off(nr);
        let readable = bufs;
        let mut k = 0;
        for b in &readable {
            let bytes: Vec<u8> = (0..b.len as usize)
                .map(|i| rd_byte(serial, k + i))
                .collect();
            self.r.write_bytes(b.offset, &bytes).unwrap();
            k += b.len as usize;
        }
        for b in &writable {
            self.r.fill(b.offset, b.len as usize, 0xee).unwrap();
        }
        let head = self.drv.add(&readable, &writable).unwrap();
        assert!(
            self.posted[usize::from(head)].is_none(),
            "head {head} reused"
        );
        self.posted[usize::from(head)] = Some(Posted {
            serial,
            slot,
            readable,
            writable,
            written: None,
        });
        self.serial += 1;
    }

    fn driver_publish(&mut self) {
        let before = self.drv.indices().avail_idx;
        let notify = self.drv.publish().unwrap();
        let published = self.drv.indices().avail_idx != before;
        if !published {
            assert!(!notify, "notify without new chains");
        }
        if published && self.dev_sleeping {
            assert!(
                notify,
                "lost kick: the device sleeps and new chains were published"
            );
        }
        if notify {
            self.kicks += 1;
            self.dev_sleeping = false;
        }
    }

    fn device_pop(&mut self) {
        let Some(c) = self.dev.pop::<MAX_SEGS>().unwrap() else {
            return;
        };
        self.dev_sleeping = false;
        let p = self.posted[usize::from(c.head())]
            .as_ref()
            .expect("device got a chain the driver does not hold");
        assert_eq!(p.serial, self.device_serial, "chains out of order");
        self.device_serial += 1;
        let expect: Vec<Seg> = p
            .readable
            .iter()
            .map(|b| (b, false))
            .chain(p.writable.iter().map(|b| (b, true)))
            .map(|(b, writable)| Seg {
                offset: b.offset,
                len: b.len,
                writable,
            })
            .collect();
        assert_eq!(c.segs(), &expect[..]);
        assert_eq!(c.readable().len(), p.readable.len());
        let rl: u64 = p.readable.iter().map(|b| u64::from(b.len)).sum();
        let wl: u64 = p.writable.iter().map(|b| u64::from(b.len)).sum();
        assert_eq!((c.readable_len(), c.writable_len()), (rl, wl));
        // Read everything the driver wrote, through the chain.
        let mut data = vec![0u8; rl as usize + 3];
        assert_eq!(c.read_at(&self.r, 0, &mut data).unwrap(), rl as usize);
        for (k, &byte) in data[..rl as usize].iter().enumerate() {
            assert_eq!(byte, rd_byte(p.serial, k), "readable byte {k}");
        }
        if rl > 2 {
            let mut tail = [0u8; 2];
            assert_eq!(c.read_at(&self.r, rl - 1, &mut tail).unwrap(), 1);
            assert_eq!(tail[0], rd_byte(p.serial, rl as usize - 1));
        }
        // Write a pattern into a random prefix of the writable part.
        let written = if wl == 0 {
            0
        } else {
            self.rng.below(wl as usize + 1)
        };
        let out: Vec<u8> = (0..written).map(|k| wr_byte(p.serial, k)).collect();
        // In two pieces, to exercise positions.
        let cut = written / 2;
        assert_eq!(c.write_at(&self.r, 0, &out[..cut]).unwrap(), cut);
        assert_eq!(
            c.write_at(&self.r, cut as u64, &out[cut..]).unwrap(),
            written - cut
        );
        let serial = p.serial;
        self.posted[usize::from(c.head())].as_mut().unwrap().written = Some(written as u32);
        self.held.push((c, serial));
    }

    fn device_push(&mut self) {
        if self.held.is_empty() {
            return;
        }
        // Out of order.
        let i = self.rng.below(self.held.len());
        let (c, _) = self.held.swap_remove(i);
        let written = self.posted[usize::from(c.head())]
            .as_ref()
            .unwrap()
            .written
            .unwrap();
        self.dev.push_used(c.head(), written).unwrap();
        self.pushed_since_signal = true;
        if self.drv_sleeping {
            self.owed_interrupt = true;
        }
    }

    fn device_notify(&mut self) {
        let notify = self.dev.should_notify().unwrap();
        if self.owed_interrupt {
            assert!(
                notify,
                "lost interrupt: chains returned while the driver slept"
            );
        }
        if !self.pushed_since_signal {
            assert!(!notify, "interrupt without newly returned chains");
        }
        self.pushed_since_signal = false;
        if notify {
            self.interrupts += 1;
            self.drv_sleeping = false;
            self.owed_interrupt = false;
        }
    }

    fn driver_pop(&mut self) {
        let Some(u) = self.drv.pop_used().unwrap() else {
            return;
        };
        self.drv_sleeping = false;
        self.owed_interrupt = false;
        let p = self.posted[usize::from(u.head)]
            .take()
            .expect("driver got back a chain it does not hold");
        let written = p.written.expect("returned before the device served it");
        let cap: u32 = p.writable.iter().map(|b| b.len).sum();
        if cap == 0 {
            assert_eq!(u.len, 0);
        } else {
            assert_eq!(u.len, written);
        }
        // Writable bytes: the device's pattern, then untouched 0xee.
        let mut k = 0usize;
        for b in &p.writable {
            let mut got = vec![0u8; b.len as usize];
            self.r.read_bytes(b.offset, &mut got).unwrap();
            for (i, &byte) in got.iter().enumerate() {
                let want = if k + i < written as usize {
                    wr_byte(p.serial, k + i)
                } else {
                    0xee
                };
                assert_eq!(byte, want, "writable byte {}", k + i);
            }
            k += b.len as usize;
        }
        // Readable bytes were not touched by the device.
        let mut k = 0usize;
        for b in &p.readable {
            let mut got = vec![0u8; b.len as usize];
            self.r.read_bytes(b.offset, &mut got).unwrap();
            for (i, &byte) in got.iter().enumerate() {
                assert_eq!(byte, rd_byte(p.serial, k + i));
            }
            k += b.len as usize;
        }
        self.free_slots.push(p.slot);
        self.completed += 1;
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=29 => self.driver_add(),
            30..=39 => self.driver_publish(),
            40..=59 => self.device_pop(),
            60..=74 => {
                self.device_push();
                if self.rng.below(2) == 0 {
                    self.device_notify();
                }
            }
            75..=77 => self.device_notify(),
            78..=94 => self.driver_pop(),
            95 => {
                if !self.dev.enable_notifications().unwrap() {
                    self.dev_sleeping = true;
                }
            }
            96 => {
                self.dev.disable_notifications().unwrap();
                self.dev_sleeping = false;
            }
            97 => {
                if !self.drv.enable_interrupts().unwrap() {
                    self.drv_sleeping = true;
                }
            }
            98 => {
                self.drv.disable_interrupts().unwrap();
                self.drv_sleeping = false;
                self.owed_interrupt = false;
            }
            _ => self.device_notify(),
        }
    }

    fn run(&mut self, chains: u64) {
        let mut steps: u64 = 0;
        while self.completed < chains {
            self.step();
            steps += 1;
            assert!(steps < chains * 200 + 10_000, "no progress");
        }
        // Drain.
        self.drv.publish().unwrap();
        for _ in 0..usize::from(self.drv.num()) + 1 {
            while self.device_pop_some() {}
            while !self.held.is_empty() {
                self.device_push();
            }
            while self.drv.has_used().unwrap() {
                self.driver_pop();
            }
        }
        assert_eq!(self.drv.in_flight(), 0);
        assert_eq!(self.drv.num_free(), usize::from(self.drv.num()));
        assert_eq!(self.dev.in_flight(), 0);
        assert!(self.posted.iter().all(|p| p.is_none()));
        let (di, vi) = (self.drv.indices(), self.dev.indices());
        assert_eq!(di.avail_idx, vi.avail_idx);
        assert_eq!(di.used_idx, vi.used_idx);
        assert_eq!(di.last_used, vi.last_avail);
        assert_eq!(di.avail_idx as u64, self.serial % 65536);
        assert!(!self.drv.is_broken() && !self.dev.is_broken());
    }

    fn device_pop_some(&mut self) -> bool {
        let before = self.dev.indices().last_avail;
        self.device_pop();
        self.dev.indices().last_avail != before
    }
}

fn params() -> impl Strategy<Value = Params> {
    let chains = if cfg!(miri) {
        20u64..40
    } else {
        // More than 2^16 chains: every case wraps the 16-bit indices.
        66_000u64..140_000
    };
    (
        0u32..7,
        prop::sample::select(vec![4u32, 8, 16, 64, 4096]),
        any::<bool>(),
        0usize..32,
        0u64..(1 << 40),
        chains,
        any::<u64>(),
    )
        .prop_map(|(lg, align, event_idx, off, pa, chains, seed)| Params {
            num: 1 << lg,
            align,
            event_idx,
            ring_off: off * 2,
            base_pa: pa & !1,
            chains,
            seed,
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 2 } else { 12 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn driver_and_device_exchange_random_chains(p in params()) {
        let mut sim = Sim::new(p);
        sim.run(p.chains);
        prop_assert!(sim.completed >= p.chains);
    }
}

#[test]
fn small_rings_wrap_many_times() {
    // num 1 and 2 are the edge cases of the masks; four wraps each.
    let chains = if cfg!(miri) { 30 } else { 4 * 65_536 + 7 };
    for (num, event_idx) in [(1, false), (2, true), (64, true)] {
        let mut sim = Sim::new(Params {
            num,
            align: 4,
            event_idx,
            ring_off: 2,
            base_pa: 0xffff_f000,
            chains,
            seed: 7,
        });
        sim.run(chains);
        if !cfg!(miri) {
            // Both notification directions were exercised.
            assert!(sim.kicks > 0 && sim.interrupts > 0);
        }
    }
}
