//! The NuttX simulator's shared-memory object (DESIGN.md §7), byte for byte.
//!
//! ```text
//! 0x00 u64 base    origin of the shared "physical" space (pa = base + offset)
//! 0x08 u32 seqs    remote -> master doorbell counter
//! 0x0C u32 seqm    master -> remote doorbell counter
//! 0x10 u32 boots   remote boot word (BOOT 1, OK 2, NEED_RESET 4)
//! 0x14 u32 bootm   master boot word
//! 0x18 ...         resource table (its reserved words are the command mailbox:
//!                  cmd_master @0x20, cmd_slave @0x24), each vdev followed by its
//!                  64 KiB carveout: rng0, rng1, rpmsg0
//! 0x301CC u16 sleepm  rptun only: master's sleeping waiters  } the struct's
//! 0x301CE u16 sleeps  rptun only: remote's sleeping waiters  } tail padding
//! ```
//!
//! The last two words are padding in NuttX's struct (its size is rounded
//! to 8): no NuttX field lives there and NuttX never reads them. rptun's
//! doorbell counts its sleeping waiters there so that a ring wakes the peer
//! only when it sleeps
//! ([`Doorbell::with_sleep_flags`](crate::doorbell::Doorbell::with_sleep_flags)).
//! Our master's boot clears the object up to them, not them (the remote may
//! be asleep); a peer that clears them anyway costs at most one late
//! (bounded-sleep) wake-up, and the counts saturate instead of wrapping.

/// Default name of the shm object (`/dev/shm/server-proxy`).
pub const SHM_NAME: &str = "server-proxy";
/// Size of the object as NuttX's 32-bit simulator lays it out.
pub const SHM_SIZE: usize = 197_072;
// The header is shared with ivshmem and the firmware: one definition, in
// the core (`rptun::remoteproc::shmem`).
pub use rptun::remoteproc::shmem::{BASE, BOOT, BOOTM, BOOTS, NEED_RESET, OK, RSC, SEQM, SEQS};
/// Offset of the master's sleepers word (struct padding, rptun only).
pub const SLEEPM: usize = SHM_SIZE - 4;
/// Offset of the remote's sleepers word (struct padding, rptun only).
pub const SLEEPS: usize = SHM_SIZE - 2;
/// Size of each carveout.
pub const CARVEOUT_SIZE: u32 = 0x10000;
/// rpmsg buffer size each way (1520-byte payloads).
pub const RPMSG_BUF_SIZE: u32 = 0x600;
/// Entries per vring.
pub const VRING_NUM: u32 = 8;
/// Vring alignment.
pub const VRING_ALIGN: u32 = 8;
/// The `base` our master writes: a page-aligned value that fits a 32-bit
/// peer's address width (NuttX writes its own mapping address; any value
/// works as long as both sides translate through it).
pub const DEFAULT_BASE: u64 = 0x1000_0000;
