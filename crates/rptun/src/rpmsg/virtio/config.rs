//! Reading and writing the rpmsg config space through a transport, one
//! field at a time (the wire format is in [`crate::wire::rpmsg_config`]).
#![forbid(unsafe_code)]

use crate::virtio::VirtioError;
use crate::wire::rpmsg::RpmsgName;
use crate::wire::rpmsg_config::{ConfigLayout, CpuName, CONFIG_LEN, CPUNAME_LEN};

/// Field offsets of a layout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offsets {
    pub h2r_size: usize,
    pub r2h_size: usize,
    /// `None` in the legacy layout.
    pub h2r_addr: Option<usize>,
    pub r2h_addr: Option<usize>,
    pub host_name: usize,
    pub remote_name: usize,
}

pub(crate) fn offsets(layout: ConfigLayout) -> Offsets {
    match layout {
        ConfigLayout::Current => Offsets {
            h2r_size: 0,
            r2h_size: 4,
            h2r_addr: Some(8),
            r2h_addr: Some(16),
            host_name: 24,
            remote_name: 32,
        },
        ConfigLayout::Legacy => Offsets {
            h2r_size: 0,
            r2h_size: 4,
            h2r_addr: None,
            r2h_addr: None,
            host_name: 8,
            remote_name: 16,
        },
    }
}

/// The config fields, decoded leniently: a name that is empty, unterminated
/// or not a valid name is `None` (and logged), so a bad name never hides the
/// sizes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Fields {
    pub h2r_size: u32,
    pub r2h_size: u32,
    pub h2r_addr: u64,
    pub r2h_addr: u64,
    pub host_name: Option<RpmsgName>,
    pub remote_name: Option<RpmsgName>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        w.copy_from_slice(s);
    }
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}

fn name_at(b: &[u8], at: usize, field: &str) -> Option<RpmsgName> {
    let raw = b.get(at..at + CPUNAME_LEN)?;
    let Some(end) = raw.iter().position(|&c| c == 0) else {
        log::warn!("rpmsg-virtio: config {field} has no NUL in its 8 bytes; ignoring it");
        return None;
    };
    if end == 0 {
        return None;
    }
    match core::str::from_utf8(&raw[..end])
        .ok()
        .and_then(|s| RpmsgName::new(s).ok())
    {
        Some(n) => Some(n),
        None => {
            log::warn!("rpmsg-virtio: config {field} is not a valid name; ignoring it");
            None
        }
    }
}

/// Reads the fields of `layout` through `read`. `config_len` must cover
/// the layout (checked by the caller).
pub(crate) fn read_fields(
    layout: ConfigLayout,
    config_len: usize,
    read: impl Fn(usize, &mut [u8]) -> Result<(), VirtioError>,
) -> Result<Fields, VirtioError> {
    let mut b = [0u8; CONFIG_LEN];
    let n = config_len.min(CONFIG_LEN).max(layout.min_len());
    read(0, &mut b[..n])?;
    let o = offsets(layout);
    Ok(Fields {
        h2r_size: u32_at(&b, o.h2r_size),
        r2h_size: u32_at(&b, o.r2h_size),
        h2r_addr: o.h2r_addr.map_or(0, |a| u64_at(&b, a)),
        r2h_addr: o.r2h_addr.map_or(0, |a| u64_at(&b, a)),
        host_name: name_at(&b, o.host_name, "host_cpuname"),
        remote_name: name_at(&b, o.remote_name, "remote_cpuname"),
    })
}

/// The 8-byte config field for `name`, if it fits (at most 7 bytes).
pub(crate) fn name_field(name: &str) -> Option<[u8; CPUNAME_LEN]> {
    CpuName::new(name).ok().map(|c| *c.raw())
}
