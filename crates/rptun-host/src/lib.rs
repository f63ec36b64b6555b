//! Host (std) platforms for rptun.
//!
//! - [`shm`]: POSIX shared-memory objects mapped into this process as
//!   [`rptun::shm::Region`]s (the mmap backend of the seam);
//! - [`doorbell`]: blocking doorbells on shared counters (futex), which also
//!   notice peers that only increment a counter and never wake anyone;
//! - [`ivshmem`]: the master side of a QEMU guest sharing an ivshmem file;
//! - [`entropy`]: the OS random number generator as a virtio-rng
//!   entropy source;
//! - [`openamp`]: the platform of OpenAMP's Linux user-space demos
//!   (`openamp.shm` + a unix-socket kick), both virtio roles;
//! - [`stream`]: byte streams (pty, serial device, TCP and Unix sockets) for
//!   rpmsg-port links, and a runner that drives a link over one.
//! - `virtio_drivers` (feature `virtio-drivers`): the virtio-drivers
//!   crate's drivers over a remoteproc vdev.
#![warn(missing_docs)]

pub mod baseline;
pub mod benchlink;
pub mod benchport;
pub mod doorbell;
pub mod entropy;
pub mod ivshmem;
pub mod openamp;
pub mod shm;
pub mod sim;
pub mod stream;
#[cfg(feature = "virtio-drivers")]
pub mod virtio_drivers;
