//! Services that run on the bus: rpmsg-ping and rpmsg-test. Their wire
//! formats are available without `alloc`; the handlers and services need it.
#![forbid(unsafe_code)]

pub mod ping;
pub mod test;
