//! rpmsg.
#![forbid(unsafe_code)]

pub mod port;
