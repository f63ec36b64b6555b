//! rpmsg-virtio against a peer that scribbles over the shared rings: both
//! roles must answer with typed errors (and take their link down), never
//! panic, hang or touch memory outside the region.

mod rpmsg_virtio_util;

use rpmsg_virtio_util::*;
use rptun::rpmsg::{RpmsgTransport, TransportError};
use rptun::virtio::DeviceTransport;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A peer error must leave the side that saw it down.
fn check<T: RpmsgTransport>(side: &T, r: Result<(), TransportError>) {
    if let Err(TransportError::Peer(_)) = r {
        assert_eq!(side.link_session(), None, "down after a peer error");
    }
}

/// One transport step of every kind, on both sides, ignoring the results
/// except for the invariant above.
fn churn(drv: &mut Drv, dev: &mut Vdev, rng: &mut Rng) {
    for _ in 0..8 {
        match rng.below(8) {
            0 => {
                let r = drv.poll();
                check(drv, r);
            }
            1 => {
                let r = dev.poll();
                check(dev, r);
            }
            2 => match drv.get_tx() {
                Ok(Some(t)) => {
                    let len = rng.below(t.size + 1);
                    let _ = drv.tx_region().write_bytes(t.offset, &[0xA5; 16]);
                    let r = drv.send(t, len);
                    check(drv, r);
                }
                r => check(drv, r.map(|_| ())),
            },
            3 => match dev.get_tx() {
                Ok(Some(t)) => {
                    let r = dev.send(t, rng.below(t.size + 1));
                    check(dev, r);
                }
                r => check(dev, r.map(|_| ())),
            },
            4 => match drv.recv() {
                Ok(Some(b)) => {
                    // Whatever the peer claims, the buffer is ours to read.
                    let mut v = vec![0u8; b.capacity];
                    drv.rx_region().read_bytes(b.offset, &mut v).unwrap();
                    let r = drv.release_rx(b);
                    check(drv, r);
                }
                r => check(drv, r.map(|_| ())),
            },
            5 => match dev.recv() {
                Ok(Some(b)) => {
                    let mut v = vec![0u8; b.capacity];
                    dev.rx_region().read_bytes(b.offset, &mut v).unwrap();
                    let r = dev.release_rx(b);
                    check(dev, r);
                }
                r => check(dev, r.map(|_| ())),
            },
            6 => {
                if drv.down_reason().is_some() {
                    let _ = drv.restart();
                }
            }
            _ => {
                let _ = drv.buffer_stats();
                let _ = dev.buffer_stats();
                let mut s = String::new();
                drv.describe(&mut s).unwrap();
                dev.describe(&mut s).unwrap();
            }
        }
    }
}

#[test]
fn scribbled_rings_give_typed_errors_never_panics() {
    let mut s = Setup::nuttx();
    s.region_len = 1 << 16;
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut peer_errors = 0;
    for round in 0..if cfg!(miri) { 4 } else { 1000 } {
        let (mut drv, mut dev, mmio) = pair(&s, driver_opts(), device_opts());
        dev.poll().unwrap();
        churn(&mut drv, &mut dev, &mut rng);
        // Scribble over one of the two rings: random 16-bit values at random
        // places in the descriptor table, avail ring or used ring.
        let Ok(q) = mmio.queue((round % 2) as u16) else {
            continue;
        };
        let n = usize::from(q.layout.num);
        let areas = [
            (q.layout.desc, 16 * n),
            (q.layout.avail, 6 + 2 * n),
            (q.layout.used, 4 + 8 * n),
        ];
        for _ in 0..1 + rng.below(4) {
            let (start, len) = areas[rng.below(3)];
            let at = (start + rng.below(len)) & !1;
            q.region.store_u16(at, rng.next() as u16).unwrap();
        }
        for _ in 0..10 {
            churn(&mut drv, &mut dev, &mut rng);
        }
        if drv.down_reason().is_some() || dev.down_reason().is_some() {
            peer_errors += 1;
        }
    }
    // The scribbles were noticed often enough to prove the checks run.
    assert!(
        peer_errors > 10,
        "only {peer_errors} rounds noticed corruption"
    );
}
