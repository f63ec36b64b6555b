//! The simulator's boot handshake (DESIGN.md §7, NuttX `sim_rptun.c`).
//!
//! Master: write the table and `base`; if the remote was up (`boots & OK`),
//! tell it to reboot (`boots = NEED_RESET`); `bootm = BOOT`; wait for
//! `boots & BOOT`; `bootm = OK`.
//! Remote: if a previous remote was up (`boots & OK`), tell the master to
//! reboot (`bootm = NEED_RESET`); `boots = BOOT`; wait for `bootm & OK`;
//! `boots = OK`.
//! Either side later sees the other's restart as `NEED_RESET` in its own
//! word ([`take_need_reset`]).

use super::layout::{RSC, SHM_SIZE, SLEEPM};
use rptun::remoteproc::shmem::{self, ShmemError};
use rptun::shm::{Region, ShmError};
use std::time::{Duration, Instant};

/// Errors of the boot handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BootError {
    /// The peer did not answer in time.
    #[error(
        "the {peer} did not answer the boot handshake within {secs} s; start it (e.g. \
         `rptun proxy`) or check that both sides use the same shm object"
    )]
    Timeout {
        /// "remote (proxy)" or "master (server)".
        peer: &'static str,
        /// Seconds waited.
        secs: u64,
    },
    /// Shared-memory access failed (object too small).
    #[error("boot words out of reach: {0}; the shm object is too small")]
    Shm(#[from] ShmError),
    /// The table does not fit.
    #[error("a {0}-byte table does not fit the simulator's shm object")]
    TableTooBig(usize),
    /// Asked to stop while waiting.
    #[error("boot handshake cancelled")]
    Cancelled,
}

/// Master, first half: clears the table area, writes `table` and `base`,
/// flags a live remote for reboot, and sets `bootm = BOOT`.
pub fn master_publish(region: &Region, table: &[u8], base: u64) -> Result<(), BootError> {
    if RSC + table.len() > SHM_SIZE.min(region.len()) {
        return Err(BootError::TableTooBig(table.len()));
    }
    // Up to the doorbells' sleepers words, not them: a remote may sleep on
    // its doorbell right now, and clearing its count would make our rings
    // skip its wake-up (see `layout::SLEEPM`).
    let below_sleepers = region.subregion(0, SLEEPM.min(region.len()))?;
    shmem::master_publish(&below_sleepers, table, base).map_err(|e| match e {
        ShmemError::Shm(e) => BootError::Shm(e),
        _ => BootError::TableTooBig(table.len()),
    })
}

/// Master, second half: waits for `boots & BOOT`, then sets `bootm = OK`.
/// `keep_going` is polled while waiting (return false to cancel).
pub fn master_wait_remote(
    region: &Region,
    timeout: Duration,
    keep_going: impl FnMut() -> bool,
) -> Result<(), BootError> {
    shmem::master_wait_remote(region, waiter(timeout, "remote (proxy)", keep_going))
}

/// Master, optional third step: waits for `boots & OK` (the remote adopted
/// the table). Needed before the command mailbox carries anything when the
/// remote sets BOOT before it has parsed the table (the QEMU firmware does).
pub fn master_wait_ready(
    region: &Region,
    timeout: Duration,
    keep_going: impl FnMut() -> bool,
) -> Result<(), BootError> {
    shmem::master_wait_ready(region, waiter(timeout, "remote (proxy)", keep_going))
}

/// Remote: runs its half of the handshake and returns the master's `base`.
pub fn remote_boot(
    region: &Region,
    timeout: Duration,
    keep_going: impl FnMut() -> bool,
) -> Result<u64, BootError> {
    shmem::remote_boot(region, waiter(timeout, "master (server)", keep_going))
}

/// True (and the flag cleared) if the peer asked this side to reboot.
pub fn take_need_reset(region: &Region, master: bool) -> Result<bool, ShmError> {
    shmem::take_need_reset(region, master)
}

/// A wait of 1 ms per call (10 ms after the first 200 ms) that gives up at
/// `timeout` or when `keep_going` says so.
fn waiter(
    timeout: Duration,
    peer: &'static str,
    mut keep_going: impl FnMut() -> bool,
) -> impl FnMut() -> Result<(), BootError> {
    let start = Instant::now();
    move || {
        if start.elapsed() > timeout {
            return Err(BootError::Timeout {
                peer,
                secs: timeout.as_secs(),
            });
        }
        if !keep_going() {
            return Err(BootError::Cancelled);
        }
        // Fast while a handshake is likely in progress, then gentle: a side
        // that waits minutes for its peer costs almost nothing.
        let nap = if start.elapsed() < Duration::from_millis(200) {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(10)
        };
        std::thread::sleep(nap);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::layout::{BOOTS, OK};

    #[test]
    fn either_start_order_completes_and_a_remote_restart_asks_the_master_to_reboot() {
        for remote_first in [false, true] {
            let r = Region::new_heap(SHM_SIZE);
            let r2 = r.clone();
            let remote = std::thread::spawn(move || {
                remote_boot(&r2, Duration::from_secs(20), || true).unwrap()
            });
            if remote_first {
                std::thread::sleep(Duration::from_millis(20));
            }
            master_publish(&r, &[1, 2, 3, 4], 0x1000_0000).unwrap();
            master_wait_remote(&r, Duration::from_secs(20), || true).unwrap();
            assert_eq!(remote.join().unwrap(), 0x1000_0000);
            assert_eq!(r.read_u32(RSC).unwrap(), 0x0403_0201);
            // the remote restarts while the master runs
            let r2 = r.clone();
            let remote = std::thread::spawn(move || {
                remote_boot(&r2, Duration::from_secs(20), || true).unwrap()
            });
            let deadline = Instant::now() + Duration::from_secs(20);
            while !take_need_reset(&r, true).unwrap() {
                assert!(Instant::now() < deadline, "master never saw NEED_RESET");
                std::thread::sleep(Duration::from_millis(1));
            }
            master_publish(&r, &[5, 6, 7, 8], 0x1000_0000).unwrap();
            master_wait_remote(&r, Duration::from_secs(20), || true).unwrap();
            remote.join().unwrap();
            assert_eq!(r.load_u32(BOOTS).unwrap(), OK);
        }
    }

    #[test]
    fn a_missing_peer_times_out_with_a_clear_error() {
        let r = Region::new_heap(SHM_SIZE);
        master_publish(&r, &[0; 16], 0).unwrap();
        let e = master_wait_remote(&r, Duration::from_millis(30), || true).unwrap_err();
        assert!(e.to_string().contains("rptun proxy"), "{e}");
        let r = Region::new_heap(SHM_SIZE);
        let e = remote_boot(&r, Duration::from_secs(5), || false).unwrap_err();
        assert_eq!(e, BootError::Cancelled);
    }

    #[test]
    fn publishing_clears_the_old_table_but_not_a_sleeping_remote() {
        let r = Region::new_heap(SHM_SIZE);
        r.fill(RSC, SHM_SIZE - RSC, 0xee).unwrap();
        r.store_u16(super::super::layout::SLEEPS, 0x0201).unwrap();
        master_publish(&r, &[1, 2, 3, 4], 0x1000_0000).unwrap();
        let mut after = [0u8; 8];
        r.read_bytes(RSC, &mut after).unwrap();
        assert_eq!(after, [1, 2, 3, 4, 0, 0, 0, 0]);
        assert_eq!(
            r.read_u8(SLEEPM - 1).unwrap(),
            0,
            "the carveouts are cleared"
        );
        assert_eq!(r.load_u16(super::super::layout::SLEEPS).unwrap(), 0x0201);
    }
}
