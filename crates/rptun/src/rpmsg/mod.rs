//! rpmsg: the bus (endpoints, addresses, name service, service registry)
//! over any transport.
//!
//! - [`transport`]: the [`RpmsgTransport`] trait a link's lower half
//!   implements (rpmsg-virtio, rpmsg-port, [`loopback`]);
//! - [`Link`]: one transport plus its endpoints and name service;
//! - [`Bus`]: many links plus the service registry;
//! - [`services`]: rpmsg-ping and rpmsg-test;
//! - [`dump`]: what a link and the bus look like right now.
//!
//! Everything that needs endpoint callbacks (the link, the bus, the
//! services, the loopback) requires the `alloc` feature; the transport trait,
//! cpu names, the wait traits and the wire formats do not.
//!
//! # Example: an echo service over the loopback pair
//!
//! ```
//! # #[cfg(feature = "alloc")] {
//! use core::time::Duration;
//! use rptun::rpmsg::loopback::{Loopback, LoopbackConfig};
//! use rptun::rpmsg::wait::TickWait;
//! use rptun::rpmsg::{on_message, EndpointConfig, Link, RpmsgError};
//! use std::sync::{Arc, Mutex};
//!
//! // Two transports connected back to back: 8 buffers of 512 bytes each way,
//! // name service with CREATE_ACK, cpus "server" and "proxy".
//! let (a, b) = Loopback::pair(LoopbackConfig::default()).unwrap();
//! let (mut server, mut proxy) = (Link::new(a), Link::new(b));
//! server.poll().unwrap(); // sees the link up
//! proxy.poll().unwrap();
//!
//! // The proxy offers "echo": every message goes back to its sender. The
//! // callback gets a context that can send on the same link.
//! proxy
//!     .create_endpoint(
//!         EndpointConfig::new("echo"),
//!         on_message(|ctx, msg| {
//!             let data = msg.to_vec();
//!             let _ = ctx.reply(&msg, &data); // never blocks
//!         }),
//!     )
//!     .unwrap();
//!
//! // The server creates an endpoint with the same name: the name service
//! // binds the two (CREATE, then CREATE_ACK).
//! let got = Arc::new(Mutex::new(Vec::new()));
//! let sink = got.clone();
//! let ept = server
//!     .create_endpoint(
//!         EndpointConfig::new("echo"),
//!         on_message(move |_ctx, msg| sink.lock().unwrap().push(msg.to_vec())),
//!     )
//!     .unwrap();
//! proxy.poll().unwrap();
//! server.poll().unwrap();
//! assert!(server.endpoint(ept).unwrap().dest != rptun::wire::rpmsg::ADDR_ANY);
//!
//! // Send with a timeout: the wait is supplied by the caller (here a virtual
//! // clock that lets the proxy run while we wait).
//! let mut wait = TickWait::new(1_000_000, || {});
//! server.send(ept, b"hello", &mut wait, Duration::from_millis(10)).unwrap();
//!
//! // Zero copy: fill a TX buffer in place, then send it.
//! let tx = server.try_get_tx(ept).unwrap();
//! tx.write(0, b"in place").unwrap();
//! server.send_nocopy(tx, 8).unwrap();
//!
//! proxy.poll().unwrap();  // echoes both
//! server.poll().unwrap(); // receives the echoes
//! assert_eq!(*got.lock().unwrap(), vec![b"hello".to_vec(), b"in place".to_vec()]);
//!
//! // Running out of TX buffers is ordinary: `trysend` says so.
//! let mut sent = 0;
//! loop {
//!     match server.trysend(ept, b"x") {
//!         Ok(()) => sent += 1,
//!         Err(RpmsgError::NoBuffer) => break,
//!         Err(e) => panic!("{e}"),
//!     }
//! }
//! assert_eq!(sent, 8);
//! print!("{}", server.dump());
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod cpu;
pub mod port;
pub mod transport;
pub mod virtio;
pub mod wait;

#[cfg(feature = "alloc")]
pub mod dump;
#[cfg(feature = "alloc")]
pub mod endpoint;
#[cfg(feature = "alloc")]
pub mod link;
#[cfg(feature = "alloc")]
pub mod loopback;
#[cfg(feature = "alloc")]
mod ns;
#[cfg(feature = "alloc")]
pub mod registry;
pub mod services;

#[cfg(all(test, feature = "alloc"))]
mod tests;

pub use cpu::{LocalCpu, RemoteCpu};
pub use transport::{BufferStats, RpmsgFeatures, RpmsgTransport, RxBuf, TransportError, TxBuf};
pub use wait::{Clock, Wait};

#[cfg(feature = "alloc")]
pub use endpoint::{
    on_message, Binding, EndpointConfig, EndpointHandler, EndpointId, FnHandler, HeldRx, Received,
    TxPayload,
};
#[cfg(feature = "alloc")]
pub use link::{Announcement, EndpointInfo, Link, LinkCtx, LinkStats, PollSummary};
#[cfg(feature = "alloc")]
pub use registry::{Bus, LinkId, Service, ServiceConfig, ServiceId};

pub use crate::wire::rpmsg::{NameError, RpmsgName, ADDR_ANY, NS_ADDR, RESERVED_ADDRESSES};

use crate::shm::ShmError;

/// Errors of the rpmsg bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RpmsgError {
    /// No TX buffer is free right now (every one is with the peer or lent).
    #[error(
        "no TX buffer free now: the peer has not returned any yet; retry later, \
         poll the link, or use a blocking send with a timeout"
    )]
    NoBuffer,
    /// A blocking operation gave up.
    #[error(
        "timed out waiting for a TX buffer: the peer is not consuming messages \
         (stalled, or not polling its link)"
    )]
    Timeout,
    /// The link is down.
    #[error("the rpmsg link is down; wait for the peer to come up (poll the link)")]
    LinkDown,
    /// The endpoint has no destination yet.
    #[error(
        "endpoint has no destination yet: wait for the peer's name service to bind it, \
         or send with an explicit destination (sendto)"
    )]
    NotBound,
    /// The endpoint id is stale (destroyed).
    #[error("no such endpoint (it was destroyed, or the id belongs to another link)")]
    NoEndpoint,
    /// Payload larger than a buffer can carry.
    #[error("payload of {len} bytes exceeds the link's maximum of {max}; split the message")]
    TooLong {
        /// Requested length.
        len: usize,
        /// Maximum payload.
        max: usize,
    },
    /// A fixed address below 1024 was requested.
    #[error(
        "address {0:#x} is reserved (below 1024, or the name service's 0x35); use ANY \
         or an address from 1024 up"
    )]
    ReservedAddress(u32),
    /// The fixed address is taken.
    #[error("address {0:#x} is already used by another endpoint on this link")]
    AddressInUse(u32),
    /// Every address is taken.
    #[error("no free local address left on this link; destroy unused endpoints")]
    NoFreeAddress,
    /// The endpoint or cpu name is invalid.
    #[error("invalid name: {0}")]
    InvalidName(#[from] NameError),
    /// The link or service id is stale.
    #[error("no such link or service (removed, or the id belongs to another bus)")]
    NoLink,
    /// A shared-memory access failed.
    #[error(transparent)]
    Shm(#[from] ShmError),
    /// The transport failed.
    #[error(transparent)]
    Transport(TransportError),
}

impl From<TransportError> for RpmsgError {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::LinkDown => RpmsgError::LinkDown,
            e => RpmsgError::Transport(e),
        }
    }
}
