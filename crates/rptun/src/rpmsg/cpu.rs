//! Cpu names: the remote cpu of a link and this side's own name are
//! different types, so passing one where the other is expected does not
//! compile (DESIGN.md §3: NuttX broke nRF53 Bluetooth by passing the local
//! name where the remote one was meant, and the service silently never bound).
#![forbid(unsafe_code)]

use crate::wire::rpmsg::{NameError, RpmsgName};

/// The name of the cpu at the **other** end of a link.
///
/// Every API that selects a link by cpu takes this type. A link has exactly
/// one authoritative remote name, reported by its transport (the rpmsg
/// config space when CPUNAME was negotiated, else the platform's name).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemoteCpu(RpmsgName);

/// The name of **this** cpu as seen on one link.
///
/// Only reported (by the transport, in dumps); no API selects by it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalCpu(RpmsgName);

macro_rules! cpu_name {
    ($t:ident, $what:literal) => {
        impl $t {
            #[doc = concat!("Names the ", $what, " cpu (at most 31 bytes, no NUL).")]
            pub fn new(name: &str) -> Result<$t, NameError> {
                RpmsgName::new(name).map($t)
            }
            #[doc = concat!("Wraps an already validated name as the ", $what, " cpu.")]
            pub const fn from_name(name: RpmsgName) -> $t {
                $t(name)
            }
            /// The name as a string.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
            /// The underlying validated name.
            pub fn name(&self) -> RpmsgName {
                self.0
            }
        }
        impl core::fmt::Debug for $t {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, concat!(stringify!($t), "({:?})"), self.0.as_str())
            }
        }
        impl core::fmt::Display for $t {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.0.as_str())
            }
        }
    };
}

cpu_name!(RemoteCpu, "remote");
cpu_name!(LocalCpu, "local");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_names_validate_and_stay_distinct_types() {
        let r = RemoteCpu::new("proxy").unwrap();
        let l = LocalCpu::new("proxy").unwrap();
        assert_eq!(r.as_str(), "proxy");
        // same text, different meaning: only comparable through their strings
        assert_eq!(r.as_str(), l.as_str());
        assert_eq!(format!("{r:?}"), "RemoteCpu(\"proxy\")");
        assert!(RemoteCpu::new(&"n".repeat(40)).is_err());
    }
}
