//! Packed little-endian layouts of the resource-table structures.
//!
//! Private to the resource-table module: the public API speaks in
//! [`super::Carveout`], [`super::Vdev`], … and byte offsets.
#![forbid(unsafe_code)]

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{
    Carveout, Name, Trace, Vdev, Vring, CARVEOUT_LEN, HEADER_LEN, NAME_LEN, TRACE_LEN, VDEV_LEN,
    VRING_LEN,
};

/// Table header.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(super) struct RawHeader {
    pub ver: U32,
    pub num: U32,
    pub reserved: [U32; 2],
}

/// Carveout and devmem entries (same layout).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(super) struct RawCarveout {
    pub rsc_type: U32,
    pub da: U32,
    pub pa: U32,
    pub len: U32,
    pub flags: U32,
    pub reserved: U32,
    pub name: [u8; NAME_LEN],
}

/// Trace entry.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(super) struct RawTrace {
    pub rsc_type: U32,
    pub da: U32,
    pub len: U32,
    pub reserved: U32,
    pub name: [u8; NAME_LEN],
}

/// Fixed part of a vdev entry.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(super) struct RawVdev {
    pub rsc_type: U32,
    pub id: U32,
    pub notifyid: U32,
    pub dfeatures: U32,
    pub gfeatures: U32,
    pub config_len: U32,
    pub status: u8,
    pub num_of_vrings: u8,
    pub reserved: [u8; 2],
}

/// One vring description.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(super) struct RawVring {
    pub da: U32,
    pub align: U32,
    pub num: U32,
    pub notifyid: U32,
    pub reserved: U32,
}

const _: () = assert!(core::mem::size_of::<RawHeader>() == HEADER_LEN);
const _: () = assert!(core::mem::size_of::<RawCarveout>() == CARVEOUT_LEN);
const _: () = assert!(core::mem::size_of::<RawTrace>() == TRACE_LEN);
const _: () = assert!(core::mem::size_of::<RawVdev>() == VDEV_LEN);
const _: () = assert!(core::mem::size_of::<RawVring>() == VRING_LEN);

impl RawCarveout {
    pub fn to_value(&self) -> Carveout {
        Carveout {
            da: self.da.get(),
            pa: self.pa.get(),
            len: self.len.get(),
            flags: self.flags.get(),
            reserved: self.reserved.get(),
            name: Name::from_raw(self.name),
        }
    }

    pub fn from_value(rsc_type: u32, c: &Carveout) -> Self {
        RawCarveout {
            rsc_type: U32::new(rsc_type),
            da: U32::new(c.da),
            pa: U32::new(c.pa),
            len: U32::new(c.len),
            flags: U32::new(c.flags),
            reserved: U32::new(c.reserved),
            name: *c.name.raw(),
        }
    }
}

impl RawTrace {
    pub fn to_value(&self) -> Trace {
        Trace {
            da: self.da.get(),
            len: self.len.get(),
            reserved: self.reserved.get(),
            name: Name::from_raw(self.name),
        }
    }

    pub fn from_value(t: &Trace) -> Self {
        RawTrace {
            rsc_type: U32::new(super::RSC_TRACE),
            da: U32::new(t.da),
            len: U32::new(t.len),
            reserved: U32::new(t.reserved),
            name: *t.name.raw(),
        }
    }
}

impl RawVdev {
    pub fn to_value(&self) -> Vdev {
        Vdev {
            id: self.id.get(),
            notifyid: self.notifyid.get(),
            dfeatures: self.dfeatures.get(),
            gfeatures: self.gfeatures.get(),
            status: self.status,
            reserved: self.reserved,
        }
    }

    pub fn from_value(v: &Vdev, num_of_vrings: u8, config_len: u32) -> Self {
        RawVdev {
            rsc_type: U32::new(super::RSC_VDEV),
            id: U32::new(v.id),
            notifyid: U32::new(v.notifyid),
            dfeatures: U32::new(v.dfeatures),
            gfeatures: U32::new(v.gfeatures),
            config_len: U32::new(config_len),
            status: v.status,
            num_of_vrings,
            reserved: v.reserved,
        }
    }
}

impl RawVring {
    pub fn to_value(&self) -> Vring {
        Vring {
            da: self.da.get(),
            align: self.align.get(),
            num: self.num.get(),
            notifyid: self.notifyid.get(),
            reserved: self.reserved.get(),
        }
    }

    pub fn from_value(v: &Vring) -> Self {
        RawVring {
            da: U32::new(v.da),
            align: U32::new(v.align),
            num: U32::new(v.num),
            notifyid: U32::new(v.notifyid),
            reserved: U32::new(v.reserved),
        }
    }
}
