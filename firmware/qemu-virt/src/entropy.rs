//! The virtio-rng device's entropy source: xorshift64* seeded from the
//! generic timer.
//!
//! NOT CRYPTOGRAPHIC. QEMU's `virt` machine gives bare metal no hardware
//! random source that this firmware uses, so the bytes are a fast
//! pseudo-random sequence whose seed is the counter value at first use and
//! which is re-mixed with the counter on every request. They are fine for
//! exercising the virtio-rng path (`hexdump /dev/random1` on the host) and
//! useless as key material.
#![forbid(unsafe_code)]

use crate::hw::timer;

/// A xorshift64* generator.
#[derive(Debug, Clone)]
pub struct XorShift {
    state: u64,
}

impl XorShift {
    /// A generator seeded from the generic timer's counter.
    pub fn from_timer() -> XorShift {
        XorShift::new(timer::now().as_micros() ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// A generator with this seed (0 is replaced: xorshift sticks at 0).
    pub fn new(seed: u64) -> XorShift {
        XorShift {
            state: if seed == 0 {
                0x2545_f491_4f6c_dd1d
            } else {
                seed
            },
        }
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fills `out` with pseudo-random bytes, after stirring the counter into
    /// the state (so the sequence depends on when requests arrive).
    pub fn fill(&mut self, out: &mut [u8]) {
        self.state ^= timer::now().as_micros().rotate_left(17);
        if self.state == 0 {
            self.state = 1;
        }
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}
