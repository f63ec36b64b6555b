//! The two-process simulator: NuttX's `sim:rpserver` / `sim:rpproxy`
//! shared-memory contract (DESIGN.md §7).
//!
//! - [`layout`], [`table`], [`boot`]: the shared object, its resource table
//!   and the boot handshake, byte for byte;
//! - [`platform`]: the remoteproc [`Platform`](rptun::remoteproc::platform::Platform)
//!   of both roles;
//! - [`node`]: one running side (shm object, remoteproc instance, doorbell
//!   loop, rpmsg bus and services) in its own thread;
//! - [`rpmsg_slot`]: the rpmsg link that outlives its vdev;
//! - [`syslog`], [`tty`]: NuttX-compatible rpmsg syslog and tty services;
//! - [`liveness`]: how our processes see each other die, outside the shared
//!   memory;
//! - [`port`]: the second link, rpmsg over a byte stream (`proxy2`).

pub mod boot;
pub mod layout;
pub mod liveness;
pub mod node;
pub mod platform;
pub mod port;
pub mod rpmsg_slot;
pub mod syslog;
pub mod table;
pub mod tty;
