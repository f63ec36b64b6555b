//! Shared-memory links without a doorbell interrupt: the header, boot
//! handshake and counter doorbells of NuttX's simulator (`sim_rptun.c`,
//! DESIGN.md §7) and of ivshmem (`rptun_ivshmem.c`, docs/IVSHMEM.md).
//!
//! Both put the same 24-byte header at the start of the shared memory,
//! followed by the resource table:
//!
//! ```text
//! 0x00 u64 base    origin of the shared "physical" space (pa = base + offset)
//! 0x08 u32 seqs    remote -> master doorbell counter
//! 0x0C u32 seqm    master -> remote doorbell counter
//! 0x10 u32 boots   remote boot word (BOOT 1, OK 2, NEED_RESET 4)
//! 0x14 u32 bootm   master boot word
//! 0x18 ...         resource table (its reserved words are the command
//!                  mailbox: cmd_master @0x20, cmd_slave @0x24)
//! ```
//!
//! A doorbell is "increment your counter" ([`SeqNotifier`]); the other side
//! notices by polling the counter at a bounded period ([`SeqWatch`]) and then
//! services every vring (`Doorbell::All`).
//!
//! The boot handshake ([`master_publish`], [`master_wait_remote`],
//! [`remote_boot`], [`take_need_reset`]) lets either side start first and
//! tells each side when the other restarted. Waiting is the caller's: every
//! wait takes a closure that sleeps a little and returns `Err` to give up
//! (a deadline, a cancel flag), so the same code runs on a host (threads,
//! `Instant`) and on bare metal (a timer).
//!
//! [`ShmemRemote`] is a complete remote-side [`Platform`] over such a region
//! (what the QEMU firmware runs); a master platform is the host's business
//! (it writes the table and may start the remote).
#![forbid(unsafe_code)]

use crate::remoteproc::addr::{AddrEnv, AddrEnvEntry, AddressMap, PhysMap};
use crate::remoteproc::platform::{
    Doorbell, LinkMap, Notify, Platform, PlatformError, RemoteCpuName, TableLocation,
};
use crate::shm::{Region, ShmError};

/// Offset of `base` (u64): the origin of the shared physical space.
pub const BASE: usize = 0x00;
/// Offset of the remote's doorbell counter.
pub const SEQS: usize = 0x08;
/// Offset of the master's doorbell counter.
pub const SEQM: usize = 0x0C;
/// Offset of the remote's boot word.
pub const BOOTS: usize = 0x10;
/// Offset of the master's boot word.
pub const BOOTM: usize = 0x14;
/// Offset of the resource table.
pub const RSC: usize = 0x18;
/// Boot word bit: this side has started.
pub const BOOT: u32 = 1;
/// Boot word bit: this side is up.
pub const OK: u32 = 2;
/// Boot word bit: the other side must re-run its boot (it restarted).
pub const NEED_RESET: u32 = 4;

/// The ivshmem flavour (QEMU `ivshmem-plain`, docs/IVSHMEM.md).
pub mod ivshmem {
    /// Default name of the backing object: `/dev/shm/rptun-ivshmem`.
    pub const SHM_NAME: &str = "rptun-ivshmem";
    /// Default size of the backing object (QEMU's `size=4M`).
    pub const SHM_SIZE: usize = 4 << 20;
    /// PCI vendor id of ivshmem (Red Hat / virtio).
    pub const PCI_VENDOR: u16 = 0x1af4;
    /// PCI device id of ivshmem (plain and doorbell).
    pub const PCI_DEVICE: u16 = 0x1110;
    /// The BAR holding the shared memory.
    pub const SHM_BAR: u8 = 2;
    /// Most bytes the resource table (with the carveouts embedded in it)
    /// spans: the simulator's table (two 64 KiB carveouts inside it) fits.
    pub const TABLE_MAX: usize = 0x40000;
    /// Default doorbell polling period, microseconds (NuttX's ivshmem
    /// watchdog period order of magnitude).
    pub const POLL_PERIOD_US: u64 = 100;
    /// The master's cpu name (what the remote calls its peer).
    pub const MASTER_CPU: &str = "server";
    /// The remote's cpu name (what the master calls its peer).
    pub const REMOTE_CPU: &str = "proxy";
}

/// Errors of the boot handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShmemError {
    /// A header word is out of the region.
    #[error("boot words out of reach: {0}; the shared memory is too small")]
    Shm(#[from] ShmError),
    /// The table does not fit behind the header.
    #[error("a {len}-byte resource table does not fit a {size}-byte shared memory")]
    TableTooBig {
        /// Table length.
        len: usize,
        /// Region length.
        size: usize,
    },
    /// The caller's wait gave up.
    #[error("timed out waiting for the {0} in the boot handshake; is it running?")]
    Timeout(&'static str),
    /// The peer wrote a `base` the region cannot be placed at.
    #[error(
        "the master's base {0:#x} cannot hold the shared memory (address overflow); \
         the master must write a smaller base"
    )]
    BadBase(u64),
}

/// Master, first half: clears the table area, writes `table` and `base`,
/// flags a live remote for reboot (`boots = NEED_RESET` when it was OK), and
/// sets `bootm = BOOT`.
pub fn master_publish(region: &Region, table: &[u8], base: u64) -> Result<(), ShmemError> {
    if RSC.saturating_add(table.len()) > region.len() {
        return Err(ShmemError::TableTooBig {
            len: table.len(),
            size: region.len(),
        });
    }
    region.fill(RSC, region.len() - RSC, 0)?;
    region.write_bytes(RSC, table)?;
    region.write_u64(BASE, base)?;
    if region.load_u32(BOOTS)? & OK != 0 {
        region.store_u32(BOOTS, NEED_RESET)?;
    }
    region.store_u32(BOOTM, BOOT)?;
    Ok(())
}

/// Master, second half: waits for `boots & BOOT`, then sets `bootm = OK`.
/// `wait` sleeps a little and returns `Err` to give up.
pub fn master_wait_remote<E: From<ShmError>>(
    region: &Region,
    wait: impl FnMut() -> Result<(), E>,
) -> Result<(), E> {
    wait_bits(region, BOOTS, BOOT, wait)?;
    region.store_u32(BOOTM, OK)?;
    Ok(())
}

/// Remote: runs its half of the handshake and returns the master's `base`:
/// [`remote_announce`] then [`remote_ready`] (NuttX's simulator order).
pub fn remote_boot<E: From<ShmError>>(
    region: &Region,
    wait: impl FnMut() -> Result<(), E>,
) -> Result<u64, E> {
    let base = remote_announce(region, wait)?;
    remote_ready(region)?;
    Ok(base)
}

/// Remote, first half: if a previous incarnation of the remote was up
/// (`boots & OK`), tells the master to reboot (`bootm = NEED_RESET`); sets
/// `boots = BOOT`; waits for `bootm & OK`; returns the master's `base`.
///
/// Read the master's counter (a [`SeqWatch`]) *before* calling this: once
/// `boots` says BOOT the master may ring at any time.
pub fn remote_announce<E: From<ShmError>>(
    region: &Region,
    wait: impl FnMut() -> Result<(), E>,
) -> Result<u64, E> {
    if region.load_u32(BOOTS)? & OK != 0 {
        region.store_u32(BOOTM, NEED_RESET)?;
    }
    region.store_u32(BOOTS, BOOT)?;
    wait_bits(region, BOOTM, OK, wait)?;
    Ok(region.read_u64(BASE)?)
}

/// Remote, second half: `boots = OK` (this side has taken the master's
/// table; [`ShmemRemote`] calls it once the table is adopted, so that a
/// master waiting in [`master_wait_ready`] does not post a mailbox command
/// into a table the remote has not parsed yet).
pub fn remote_ready(region: &Region) -> Result<(), ShmError> {
    region.store_u32(BOOTS, OK)
}

/// Master, optional third step: waits for `boots & OK` (the remote is up).
pub fn master_wait_ready<E: From<ShmError>>(
    region: &Region,
    wait: impl FnMut() -> Result<(), E>,
) -> Result<(), E> {
    wait_bits(region, BOOTS, OK, wait)
}

/// True (and the flag cleared) if the peer asked this side to reboot:
/// `NEED_RESET` in this side's own boot word.
pub fn take_need_reset(region: &Region, master: bool) -> Result<bool, ShmError> {
    let word = if master { BOOTM } else { BOOTS };
    if region.load_u32(word)? & NEED_RESET != 0 {
        region.store_u32(word, 0)?;
        return Ok(true);
    }
    Ok(false)
}

fn wait_bits<E: From<ShmError>>(
    region: &Region,
    word: usize,
    bits: u32,
    mut wait: impl FnMut() -> Result<(), E>,
) -> Result<(), E> {
    loop {
        if region.load_u32(word)? & bits != 0 {
            return Ok(());
        }
        wait()?;
    }
}

/// The address map of such a link: resource-table `da`s are byte offsets in
/// the region (NuttX's masters map da 0 to the start of the object), and
/// physical addresses are `base + offset`.
pub fn link_map(base: u64, len: usize) -> Result<LinkMap, ShmemError> {
    let size = len as u64;
    let env = AddrEnv::from_entries(&[AddrEnvEntry {
        pa: base,
        da: 0,
        size,
    }])
    .map_err(|_| ShmemError::BadBase(base))?;
    let phys = PhysMap::new(base, len).map_err(|_| ShmemError::BadBase(base))?;
    Ok(AddressMap::new(env, phys))
}

/// Rings the peer: increments this side's counter (`seqs` on the remote,
/// `seqm` on the master). Cheap to clone.
#[derive(Debug, Clone)]
pub struct SeqNotifier {
    region: Region,
    counter: usize,
}

impl SeqNotifier {
    /// The doorbell of the master (`master = true`, counter `seqm`) or of
    /// the remote (counter `seqs`).
    pub fn new(region: Region, master: bool) -> SeqNotifier {
        SeqNotifier {
            region,
            counter: if master { SEQM } else { SEQS },
        }
    }

    /// Increments the counter.
    pub fn ring(&self) -> Result<(), ShmError> {
        self.region.fetch_add_u32(self.counter, 1).map(|_| ())
    }
}

impl Notify for SeqNotifier {
    /// Every doorbell is "look at everything": the counter carries no id.
    fn notify(&self, _target: Doorbell) -> Result<(), PlatformError> {
        self.ring()
            .map_err(|_| PlatformError::Failed("ring the peer (doorbell counter out of reach)"))
    }
}

/// Watches the peer's doorbell counter: [`SeqWatch::changed`] is true once
/// per change (however many increments it merged).
#[derive(Debug, Clone)]
pub struct SeqWatch {
    counter: usize,
    last: u32,
}

impl SeqWatch {
    /// Watches the peer of the master (`master = true`: the remote's `seqs`)
    /// or of the remote (the master's `seqm`), starting from its value now.
    pub fn new(region: &Region, master: bool) -> SeqWatch {
        let counter = if master { SEQS } else { SEQM };
        SeqWatch {
            counter,
            last: region.load_u32(counter).unwrap_or(0),
        }
    }

    /// True if the counter moved since the last call (or since `new`).
    pub fn changed(&mut self, region: &Region) -> bool {
        match region.load_u32(self.counter) {
            Ok(v) if v != self.last => {
                self.last = v;
                true
            }
            _ => false,
        }
    }

    /// The value last seen.
    pub fn last(&self) -> u32 {
        self.last
    }
}

/// The remote side of a shared-memory link as a [`Platform`]: the firmware's
/// (or a test's) half of the handshake, the master's table, counter
/// doorbells.
///
/// `resource_table` runs [`remote_announce`] (so the master's table is
/// complete when the instance adopts it) and learns `base`; `start` (after
/// the adoption) sets `boots = OK` ([`remote_ready`]); `stop` does nothing. `W` is the boot wait: sleep a
/// little, `Err` to give up.
pub struct ShmemRemote<W> {
    region: Region,
    master_cpu: RemoteCpuName,
    table_max: usize,
    base: Option<u64>,
    wait: W,
}

impl<W: FnMut() -> Result<(), ShmemError>> ShmemRemote<W> {
    /// The remote side over `region`, whose peer (the master) is called
    /// `master_cpu`; the table spans at most `table_max` bytes.
    pub fn new(region: Region, master_cpu: RemoteCpuName, table_max: usize, wait: W) -> Self {
        ShmemRemote {
            region,
            master_cpu,
            table_max,
            base: None,
            wait,
        }
    }

    /// The master's `base`, once the handshake ran.
    pub fn base(&self) -> Option<u64> {
        self.base
    }

    /// A watch on the master's doorbell counter, starting now.
    pub fn watch(&self) -> SeqWatch {
        SeqWatch::new(&self.region, false)
    }

    /// True (and the flag cleared) if the master restarted and this side
    /// must restart its link.
    pub fn take_need_reset(&self) -> bool {
        take_need_reset(&self.region, false).unwrap_or(false)
    }
}

impl<W> core::fmt::Debug for ShmemRemote<W> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ShmemRemote")
            .field("len", &self.region.len())
            .field("master_cpu", &self.master_cpu)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn platform_error(e: ShmemError) -> PlatformError {
    match e {
        ShmemError::Timeout(_) => PlatformError::Timeout("boot handshake"),
        ShmemError::BadBase(_) => {
            PlatformError::Failed("place the shared memory at the master's base")
        }
        _ => PlatformError::Failed("run the boot handshake (shared memory too small?)"),
    }
}

impl<W: FnMut() -> Result<(), ShmemError>> Platform for ShmemRemote<W> {
    type Notifier = SeqNotifier;

    fn remote_cpu(&self) -> RemoteCpuName {
        self.master_cpu
    }

    fn is_master(&self) -> bool {
        false
    }

    fn is_autostart(&self) -> bool {
        true
    }

    fn region(&self) -> Region {
        self.region.clone()
    }

    fn resource_table(&mut self) -> Result<TableLocation, PlatformError> {
        let base = remote_announce(&self.region, &mut self.wait).map_err(platform_error)?;
        link_map(base, self.region.len()).map_err(platform_error)?;
        self.base = Some(base);
        Ok(TableLocation {
            offset: RSC,
            max_len: self
                .table_max
                .min(self.region.len() - RSC.min(self.region.len())),
        })
    }

    fn address_map(&self) -> Result<LinkMap, PlatformError> {
        let base = self.base.ok_or(PlatformError::Failed(
            "map addresses before the boot handshake",
        ))?;
        link_map(base, self.region.len()).map_err(platform_error)
    }

    fn start(&mut self) -> Result<(), PlatformError> {
        remote_ready(&self.region).map_err(|_| PlatformError::Failed("write the boot word"))
    }

    fn stop(&mut self) -> Result<(), PlatformError> {
        Ok(())
    }

    fn notifier(&self) -> SeqNotifier {
        SeqNotifier::new(self.region.clone(), false)
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn sleeper(secs: u64) -> impl FnMut() -> Result<(), ShmemError> {
        let end = Instant::now() + Duration::from_secs(secs);
        move || {
            if Instant::now() > end {
                return Err(ShmemError::Timeout("peer"));
            }
            std::thread::sleep(Duration::from_millis(1));
            Ok(())
        }
    }

    #[test]
    fn header_offsets_are_nuttx_s() {
        // Hand-derived from NuttX's `struct rptun_shmem_s` / ivshmem's
        // `struct rptun_ivshmem_mem_s`: u64 then four u32, then the table.
        assert_eq!(
            (BASE, SEQS, SEQM, BOOTS, BOOTM, RSC),
            (0, 8, 12, 16, 20, 24)
        );
        // The mailbox overlays the table header's reserved words.
        assert_eq!(RSC + crate::remoteproc::mailbox::CMD_MASTER_OFFSET, 0x20);
        assert_eq!(RSC + crate::remoteproc::mailbox::CMD_SLAVE_OFFSET, 0x24);
    }

    #[test]
    fn handshake_in_either_order_then_a_master_restart_is_seen_by_the_remote() {
        for remote_first in [false, true] {
            let r = Region::new_heap(4096);
            let r2 = r.clone();
            let remote = std::thread::spawn(move || remote_boot(&r2, sleeper(20)).unwrap());
            if remote_first {
                std::thread::sleep(Duration::from_millis(20));
            }
            master_publish(&r, &[9, 8, 7, 6], 0x1000_0000).unwrap();
            master_wait_remote(&r, sleeper(20)).unwrap();
            assert_eq!(remote.join().unwrap(), 0x1000_0000);
            assert_eq!(r.load_u32(BOOTS).unwrap(), OK);
            assert_eq!(r.read_u32(RSC).unwrap(), 0x0607_0809);
            // the master re-publishes: the remote is told to reboot
            master_publish(&r, &[1, 2, 3, 4], 0x1000_0000).unwrap();
            assert!(take_need_reset(&r, false).unwrap());
            assert!(!take_need_reset(&r, false).unwrap());
        }
    }

    #[test]
    fn the_master_can_wait_until_the_remote_took_the_table() {
        let r = Region::new_heap(4096);
        master_publish(&r, &[0; 16], 0x2000).unwrap();
        let r2 = r.clone();
        let remote = std::thread::spawn(move || {
            let base = remote_announce(&r2, sleeper(20)).unwrap();
            // ... the remote parses the table here ...
            std::thread::sleep(Duration::from_millis(20));
            remote_ready(&r2).unwrap();
            base
        });
        master_wait_remote(&r, sleeper(20)).unwrap();
        master_wait_ready(&r, sleeper(20)).unwrap();
        assert_eq!(r.load_u32(BOOTS).unwrap(), OK);
        assert_eq!(remote.join().unwrap(), 0x2000);
    }

    #[test]
    fn a_missing_master_ends_in_the_callers_error_and_a_big_table_is_refused() {
        let r = Region::new_heap(64);
        let mut waits = 0;
        let e = remote_boot(&r, || {
            waits += 1;
            if waits == 3 {
                Err(ShmemError::Timeout("master"))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(e, ShmemError::Timeout("master"));
        assert_eq!(waits, 3);
        assert_eq!(r.load_u32(BOOTS).unwrap(), BOOT);
        assert_eq!(
            master_publish(&r, &[0; 41], 0),
            Err(ShmemError::TableTooBig { len: 41, size: 64 })
        );
    }

    #[test]
    fn counters_ring_and_watch() {
        let r = Region::new_heap(64);
        let mut m = SeqWatch::new(&r, true); // master watches seqs
        let mut s = SeqWatch::new(&r, false); // remote watches seqm
        assert!(!m.changed(&r) && !s.changed(&r));
        SeqNotifier::new(r.clone(), false)
            .notify(Doorbell::Id(3))
            .unwrap();
        SeqNotifier::new(r.clone(), false).ring().unwrap();
        assert!(m.changed(&r));
        assert!(!m.changed(&r), "merged increments are one change");
        assert!(!s.changed(&r));
        SeqNotifier::new(r.clone(), true).ring().unwrap();
        assert!(s.changed(&r));
        assert_eq!(
            (r.load_u32(SEQS).unwrap(), r.load_u32(SEQM).unwrap()),
            (2, 1)
        );
    }

    #[test]
    fn link_map_translates_offsets_and_refuses_an_overflowing_base() {
        let m = link_map(0x1000_0000, 0x40_0000).unwrap();
        assert_eq!(m.offset_to_pa(0x100, 4).unwrap(), 0x1000_0100);
        assert_eq!(m.da_to_pa(0x18, 4).unwrap(), 0x1000_0018);
        assert!(m.pa_to_offset(0x1040_0000, 1).is_err());
        assert_eq!(
            link_map(u64::MAX - 10, 4096).unwrap_err(),
            ShmemError::BadBase(u64::MAX - 10)
        );
    }
}
