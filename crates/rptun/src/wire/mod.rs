//! Byte-exact wire formats shared with Linux, OpenAMP and NuttX peers.
#![forbid(unsafe_code)]

pub mod rpmsg;
pub mod rpmsg_config;
pub mod rsc;
