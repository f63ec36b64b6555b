//! remoteproc: the pieces of a remote-core link that do not depend on virtio.
//!
//! A remoteproc link is a region of shared memory, a resource table in it
//! and a doorbell each way. This module holds the building blocks that the
//! life cycle and the vdev transport are made of (DESIGN.md §1, §6, §8):
//!
//! - [`addr`]: address translation between the remote's device addresses
//!   (`da`, what a resource table or an ELF image says), the peers' shared
//!   "physical" space (`pa`, what virtqueue descriptors carry) and byte
//!   offsets into the local [`Region`](crate::shm::Region);
//! - [`carveout`]: an allocator for vrings and buffers inside a carveout that
//!   hands out offsets, aligned on the *physical* address, and keeps its
//!   bookkeeping in local memory (a peer cannot corrupt it);
//! - [`elf`]: loading an ELF firmware image into a region through the address
//!   map and locating its `.resource_table`;
//! - [`mailbox`]: the command mailbox (PANIC / RESET / STOP and their ACK)
//!   over the resource-table header's two reserved words;
//! - [`platform`]: the platform trait (NuttX's `rptun_ops_s`) a board or host
//!   implements;
//! - [`table`]: resource-table assignment (master) and adoption (remote);
//! - [`vdev`]: the remoteproc virtio transport, one per vdev entry
//!   (driver and device roles);
//! - `registry` (feature `alloc`): virtio factories by device id and role;
//! - `instance` (feature `alloc`): the life cycle of a link (start, stop,
//!   restart, doorbells, commands);
//! - `rpmsg_vdev` (feature `alloc`): rpmsg-virtio registered on rpmsg vdevs,
//!   handing links to the application's bus;
//! - [`shmem`]: header, boot handshake and counter doorbells of links without
//!   a doorbell interrupt (NuttX's simulator, ivshmem), and a remote-side
//!   platform over them.
//!
//! Everything here except `registry` and `instance` is `no_std` and works
//! without `alloc`; tables that would grow on a heap have a fixed,
//! const-generic capacity instead.
#![forbid(unsafe_code)]

pub mod addr;
pub mod carveout;
pub mod elf;
#[cfg(feature = "alloc")]
pub mod instance;
pub mod mailbox;
pub mod platform;
#[cfg(feature = "alloc")]
pub mod registry;
#[cfg(feature = "alloc")]
pub mod rpmsg_vdev;
pub mod shmem;
pub mod table;
pub mod vdev;

/// Which end of a remoteproc link this side is.
///
/// The **master** owns the resource table (and by default drives the
/// virtio devices in it); the **remote** is the core the table describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that owns and writes the resource table.
    Master,
    /// The side the resource table describes.
    Remote,
}

impl Role {
    /// True for [`Role::Master`].
    pub fn is_master(self) -> bool {
        self == Role::Master
    }

    /// The role of the other end of the link.
    pub fn peer(self) -> Role {
        match self {
            Role::Master => Role::Remote,
            Role::Remote => Role::Master,
        }
    }
}
