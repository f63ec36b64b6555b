//! # rptun: inter-processor communication for asymmetric multi-core systems
//!
//! The `no_std` core of rptun. Layers, bottom up (see `DESIGN.md`):
//!
//! - [`shm`]: the shared-memory seam, the only place that touches raw memory;
//! - [`wire`]: byte-exact wire formats (resource table, rpmsg, name service);
//! - [`virtio`]: split virtqueues (driver and device side) and the
//!   transport traits;
//! - [`devices`]: virtio devices over any transport, both roles
//!   (virtio-rng with feature `rng`, virtio-console with feature `console`);
//! - [`remoteproc`]: address translation, carveout allocator, ELF loader and
//!   command mailbox of a remote-core link;
//!
//! Every module except [`shm`] is safe code.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod devices;
pub mod remoteproc;
pub mod rpmsg;
pub mod shm;
pub mod virtio;
pub mod wire;
