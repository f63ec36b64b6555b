//! virtio-mmio register map (virtio 1.x §4.2.2 "MMIO Device Register
//! Layout", Linux `include/uapi/linux/virtio_mmio.h`).
//!
//! Offsets are from the start of the register window. Every register is
//! 32 bits wide, little-endian, and must be accessed with 32-bit accesses;
//! only the device-specific config space from [`CONFIG`] on may be accessed
//! with narrower widths. "R"/"W" say who may read or write from the driver's
//! point of view.
//!
//! Only the modern (Version 2) layout is described: the legacy-only
//! registers `GuestPageSize` (0x028), `QueueAlign` (0x03c) and `QueuePFN`
//! (0x040) are not used here.
#![forbid(unsafe_code)]

/// R: magic value, must read [`MAGIC`] ("virt" in little-endian ASCII).
pub const MAGIC_VALUE: usize = 0x000;
/// R: register-layout version; [`VERSION_MODERN`] for this transport.
pub const VERSION: usize = 0x004;
/// R: virtio device id (see [`crate::virtio::id`]); 0 = no device here.
pub const DEVICE_ID: usize = 0x008;
/// R: vendor id of the device.
pub const VENDOR_ID: usize = 0x00c;
/// R: 32 bits of the device's features, selected by [`DEVICE_FEATURES_SEL`].
pub const DEVICE_FEATURES: usize = 0x010;
/// W: which 32-bit word of the device features [`DEVICE_FEATURES`] shows.
pub const DEVICE_FEATURES_SEL: usize = 0x014;
/// W: 32 bits of the features the driver accepted, selected by
/// [`DRIVER_FEATURES_SEL`].
pub const DRIVER_FEATURES: usize = 0x020;
/// W: which 32-bit word of the driver features [`DRIVER_FEATURES`] writes.
pub const DRIVER_FEATURES_SEL: usize = 0x024;
/// W: selects the queue the `Queue*` registers below refer to.
pub const QUEUE_SEL: usize = 0x030;
/// R: largest size the selected queue may have; 0 = the queue does not exist.
pub const QUEUE_NUM_MAX: usize = 0x034;
/// W: size (number of entries) of the selected queue.
pub const QUEUE_NUM: usize = 0x038;
/// RW: 1 = the selected queue is set up and may be used by the device.
pub const QUEUE_READY: usize = 0x044;
/// W: the driver kicks a queue by writing its index here.
pub const QUEUE_NOTIFY: usize = 0x050;
/// R: why the device interrupted ([`INT_VRING`], [`INT_CONFIG`]).
pub const INTERRUPT_STATUS: usize = 0x060;
/// W: acknowledges the interrupt bits written.
pub const INTERRUPT_ACK: usize = 0x064;
/// RW: device status byte (see [`crate::virtio::status`]); writing 0 resets.
pub const STATUS: usize = 0x070;
/// W: low 32 bits of the selected queue's descriptor table address.
pub const QUEUE_DESC_LOW: usize = 0x080;
/// W: high 32 bits of the selected queue's descriptor table address.
pub const QUEUE_DESC_HIGH: usize = 0x084;
/// W: low 32 bits of the selected queue's driver area (avail ring).
pub const QUEUE_DRIVER_LOW: usize = 0x090;
/// W: high 32 bits of the selected queue's driver area (avail ring).
pub const QUEUE_DRIVER_HIGH: usize = 0x094;
/// W: low 32 bits of the selected queue's device area (used ring).
pub const QUEUE_DEVICE_LOW: usize = 0x0a0;
/// W: high 32 bits of the selected queue's device area (used ring).
pub const QUEUE_DEVICE_HIGH: usize = 0x0a4;
/// W: selects a shared-memory region (virtio 1.2; none exist here).
pub const SHM_SEL: usize = 0x0ac;
/// R: low 32 bits of the selected shared-memory region's length
/// (all ones: no such region).
pub const SHM_LEN_LOW: usize = 0x0b0;
/// R: high 32 bits of the selected shared-memory region's length.
pub const SHM_LEN_HIGH: usize = 0x0b4;
/// R: low 32 bits of the selected shared-memory region's base.
pub const SHM_BASE_LOW: usize = 0x0b8;
/// R: high 32 bits of the selected shared-memory region's base.
pub const SHM_BASE_HIGH: usize = 0x0bc;
/// R: changes whenever the device changes its config space; read it before
/// and after reading config and retry when it differs.
pub const CONFIG_GENERATION: usize = 0x0fc;
/// RW: start of the device-specific config space.
pub const CONFIG: usize = 0x100;

/// Value of [`MAGIC_VALUE`]: the bytes `"virt"` read as a little-endian u32.
pub const MAGIC: u32 = 0x7472_6976;
/// Value of [`VERSION`] for the legacy (pre-1.0) layout, not supported here.
pub const VERSION_LEGACY: u32 = 1;
/// Value of [`VERSION`] for the modern (virtio 1.x) layout used here.
pub const VERSION_MODERN: u32 = 2;

/// [`INTERRUPT_STATUS`] bit: a queue has new used buffers.
pub const INT_VRING: u32 = 1;
/// [`INTERRUPT_STATUS`] bit: the config space changed (or the device needs a
/// reset).
pub const INT_CONFIG: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_mmio as vb;

    #[test]
    fn offsets_match_the_linux_uapi_header() {
        let pairs: &[(usize, u32)] = &[
            (MAGIC_VALUE, vb::VIRTIO_MMIO_MAGIC_VALUE),
            (VERSION, vb::VIRTIO_MMIO_VERSION),
            (DEVICE_ID, vb::VIRTIO_MMIO_DEVICE_ID),
            (VENDOR_ID, vb::VIRTIO_MMIO_VENDOR_ID),
            (DEVICE_FEATURES, vb::VIRTIO_MMIO_DEVICE_FEATURES),
            (DEVICE_FEATURES_SEL, vb::VIRTIO_MMIO_DEVICE_FEATURES_SEL),
            (DRIVER_FEATURES, vb::VIRTIO_MMIO_DRIVER_FEATURES),
            (DRIVER_FEATURES_SEL, vb::VIRTIO_MMIO_DRIVER_FEATURES_SEL),
            (QUEUE_SEL, vb::VIRTIO_MMIO_QUEUE_SEL),
            (QUEUE_NUM_MAX, vb::VIRTIO_MMIO_QUEUE_NUM_MAX),
            (QUEUE_NUM, vb::VIRTIO_MMIO_QUEUE_NUM),
            (QUEUE_READY, vb::VIRTIO_MMIO_QUEUE_READY),
            (QUEUE_NOTIFY, vb::VIRTIO_MMIO_QUEUE_NOTIFY),
            (INTERRUPT_STATUS, vb::VIRTIO_MMIO_INTERRUPT_STATUS),
            (INTERRUPT_ACK, vb::VIRTIO_MMIO_INTERRUPT_ACK),
            (STATUS, vb::VIRTIO_MMIO_STATUS),
            (QUEUE_DESC_LOW, vb::VIRTIO_MMIO_QUEUE_DESC_LOW),
            (QUEUE_DESC_HIGH, vb::VIRTIO_MMIO_QUEUE_DESC_HIGH),
            (QUEUE_DRIVER_LOW, vb::VIRTIO_MMIO_QUEUE_AVAIL_LOW),
            (QUEUE_DRIVER_HIGH, vb::VIRTIO_MMIO_QUEUE_AVAIL_HIGH),
            (QUEUE_DEVICE_LOW, vb::VIRTIO_MMIO_QUEUE_USED_LOW),
            (QUEUE_DEVICE_HIGH, vb::VIRTIO_MMIO_QUEUE_USED_HIGH),
            (SHM_SEL, vb::VIRTIO_MMIO_SHM_SEL),
            (SHM_LEN_LOW, vb::VIRTIO_MMIO_SHM_LEN_LOW),
            (SHM_LEN_HIGH, vb::VIRTIO_MMIO_SHM_LEN_HIGH),
            (SHM_BASE_LOW, vb::VIRTIO_MMIO_SHM_BASE_LOW),
            (SHM_BASE_HIGH, vb::VIRTIO_MMIO_SHM_BASE_HIGH),
            (CONFIG_GENERATION, vb::VIRTIO_MMIO_CONFIG_GENERATION),
            (CONFIG, vb::VIRTIO_MMIO_CONFIG),
        ];
        for &(ours, linux) in pairs {
            assert_eq!(ours, linux as usize, "register at {ours:#x}");
        }
        assert_eq!(INT_VRING, vb::VIRTIO_MMIO_INT_VRING);
        assert_eq!(INT_CONFIG, vb::VIRTIO_MMIO_INT_CONFIG);
    }

    #[test]
    fn magic_is_virt_in_ascii() {
        assert_eq!(&MAGIC.to_le_bytes(), b"virt");
    }
}
