//! virtio: status and feature negotiation, split virtqueues, transports.
#![forbid(unsafe_code)]
pub mod queue;
