//! A driver thread and a device thread on one heap region, standing in for
//! two cores: 10^4 chains, every byte checked on both ends, and both sides
//! sleep on "doorbells" (atomic counters) using the notification suppression
//! protocol, so a lost kick or interrupt shows up as a hang (caught by a
//! generous guard) instead of passing silently.

use rptun::shm::Region;
use rptun::virtio::queue::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const COUNT: u64 = if cfg!(miri) { 24 } else { 10_000 };
const NUM: u16 = 16;
const SLOT: usize = 512;
const PA: u64 = 0x7000_0000;
const BUFS: usize = 8192;

/// Buffer lengths of chain `s`: readable (the first holds the serial) and
/// writable. Both sides derive them from the serial.
fn shape(s: u64) -> (Vec<u32>, Vec<u32>) {
    let mut r = vec![8 + (s % 41) as u32];
    if s % 3 == 0 {
        r.push((s % 17) as u32);
    }
    let w = (0..s % 4).map(|j| 1 + ((s * 7 + j) % 50) as u32).collect();
    (r, w)
}

fn rd_byte(s: u64, k: usize) -> u8 {
    (s as usize * 5 + k * 3 + 1) as u8
}

fn wr_byte(s: u64, k: usize) -> u8 {
    (s as usize * 11 + k * 29 + 7) as u8
}

/// Waits until `bell` moves away from `seen`.
fn wait(bell: &AtomicU64, seen: u64, what: &str) {
    let start = Instant::now();
    while bell.load(Ordering::SeqCst) == seen {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "lost {what}: the peer never rang"
        );
        std::thread::yield_now();
    }
}

fn driver(mut q: DriverQueue<NUM_USIZE>, kick: &AtomicU64, irq: &AtomicU64) {
    let r = q.region().clone();
    let mut free_slots: Vec<usize> = (0..usize::from(NUM)).collect();
    let mut posted: Vec<Option<(u64, usize)>> = vec![None; usize::from(NUM)];
    let (mut sent, mut received) = (0u64, 0u64);
    q.disable_interrupts().unwrap();
    loop {
        let mut added = false;
        while sent < COUNT && !free_slots.is_empty() {
            let (rl, wl) = shape(sent);
            if rl.len() + wl.len() > q.num_free() {
                break;
            }
            let slot = free_slots.pop().unwrap();
            let mut off = BUFS + slot * SLOT;
            let mut readable = Vec::new();
            let mut k = 0;
            for (i, &len) in rl.iter().enumerate() {
                let mut bytes: Vec<u8> = (0..len as usize).map(|j| rd_byte(sent, k + j)).collect();
                if i == 0 {
                    bytes[..8].copy_from_slice(&sent.to_le_bytes());
                }
                r.write_bytes(off, &bytes).unwrap();
                readable.push(Buf::new(off, len));
                off += len as usize;
                k += len as usize;
            }
            let mut writable = Vec::new();
            for &len in &wl {
                r.fill(off, len as usize, 0).unwrap();
                writable.push(Buf::new(off, len));
                off += len as usize;
            }
            let head = q.add(&readable, &writable).unwrap();
            assert!(posted[usize::from(head)].is_none());
            posted[usize::from(head)] = Some((sent, slot));
            sent += 1;
            added = true;
        }
        if added && q.publish().unwrap() {
            kick.fetch_add(1, Ordering::SeqCst);
        }
        while let Some(u) = q.pop_used().unwrap() {
            let (s, slot) = posted[usize::from(u.head)].take().unwrap();
            let (rl, wl) = shape(s);
            let cap: u32 = wl.iter().sum();
            assert_eq!(u.len, cap, "chain {s}");
            let mut off = BUFS + slot * SLOT + rl.iter().sum::<u32>() as usize;
            let mut got = vec![0u8; cap as usize];
            r.read_bytes(off, &mut got).unwrap();
            for (k, &b) in got.iter().enumerate() {
                assert_eq!(b, wr_byte(s, k), "chain {s} writable byte {k}");
            }
            off = BUFS + slot * SLOT;
            let mut first = [0u8; 8];
            r.read_bytes(off, &mut first).unwrap();
            assert_eq!(u64::from_le_bytes(first), s, "readable part changed");
            free_slots.push(slot);
            received += 1;
        }
        if received == COUNT {
            break;
        }
        let can_add = sent < COUNT && !free_slots.is_empty() && {
            let (rl, wl) = shape(sent);
            rl.len() + wl.len() <= q.num_free()
        };
        if !can_add {
            // Sleep until the device interrupts, unless work arrived while
            // interrupts were off.
            let seen = irq.load(Ordering::SeqCst);
            if !q.enable_interrupts().unwrap() {
                wait(irq, seen, "interrupt");
            }
            q.disable_interrupts().unwrap();
        }
    }
    assert_eq!(q.num_free(), usize::from(NUM));
    assert!(!q.is_broken());
}

fn device(mut q: DeviceQueue, kick: &AtomicU64, irq: &AtomicU64) {
    let r = q.region().clone();
    let mut done = 0u64;
    q.disable_notifications().unwrap();
    loop {
        while let Some(c) = q.pop::<8>().unwrap() {
            let mut first = [0u8; 8];
            assert_eq!(c.read_at(&r, 0, &mut first).unwrap(), 8);
            let s = u64::from_le_bytes(first);
            assert_eq!(s, done, "chains out of order");
            let (rl, wl) = shape(s);
            let lens: Vec<u32> = c.readable().iter().map(|g| g.len).collect();
            assert_eq!(lens, rl);
            let lens: Vec<u32> = c.writable().iter().map(|g| g.len).collect();
            assert_eq!(lens, wl);
            let mut data = vec![0u8; c.readable_len() as usize];
            c.read_at(&r, 0, &mut data).unwrap();
            for (k, &b) in data.iter().enumerate().skip(8) {
                assert_eq!(b, rd_byte(s, k), "chain {s} readable byte {k}");
            }
            let out: Vec<u8> = (0..c.writable_len() as usize)
                .map(|k| wr_byte(s, k))
                .collect();
            let n = c.write_at(&r, 0, &out).unwrap();
            q.push_used(c.head(), n as u32).unwrap();
            if q.should_notify().unwrap() {
                irq.fetch_add(1, Ordering::SeqCst);
            }
            done += 1;
        }
        if done == COUNT {
            break;
        }
        let seen = kick.load(Ordering::SeqCst);
        if !q.enable_notifications().unwrap() {
            wait(kick, seen, "kick");
        }
        q.disable_notifications().unwrap();
    }
    assert!(!q.is_broken());
}

const NUM_USIZE: usize = NUM as usize;

fn run(event_idx: bool) {
    let r = Region::new_heap(BUFS + usize::from(NUM) * SLOT);
    let l = QueueLayout::legacy(0, PA, NUM, 4096).unwrap();
    let w = Window::new(PA, 0, r.len());
    let drv = DriverQueue::<NUM_USIZE>::new(r.clone(), l, w, event_idx).unwrap();
    let dev = DeviceQueue::new(r.clone(), l, w, event_idx).unwrap();
    let kick = Arc::new(AtomicU64::new(0));
    let irq = Arc::new(AtomicU64::new(0));
    let (k2, i2) = (kick.clone(), irq.clone());
    let t = std::thread::spawn(move || device(dev, &k2, &i2));
    driver(drv, &kick, &irq);
    t.join().unwrap();
    assert_eq!(r.load_u16(l.avail_idx()).unwrap(), (COUNT % 65536) as u16);
    assert_eq!(r.load_u16(l.used_idx()).unwrap(), (COUNT % 65536) as u16);
}

#[test]
fn two_threads_with_suppression_flags() {
    run(false);
}

#[test]
fn two_threads_with_event_idx() {
    run(true);
}
