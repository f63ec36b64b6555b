//! The shared-memory layout of OpenAMP's Linux demos (DESIGN.md §10).
//!
//! ```text
//! 0x00000  resource table (88 B): header, offset[1] = 20, one rpmsg vdev
//!          (dfeatures NS, config_len 0) with two vrings
//! 0x04000  vring0 (device → driver), 256 entries, align 0x1000
//! 0x08000  vring1 (driver → device), 256 entries, align 0x1000
//! 0x10000  256 RX buffers of 512 B (posted by the driver on vring0)
//! 0x30000  TX buffers of 512 B (driver → device, taken as needed)
//! 0x80000  end of the 512 KiB object
//! ```
//!
//! Every address in the object is its byte offset (physical base 0).
#![forbid(unsafe_code)]

use rptun::virtio::queue::QueueLayout;
use rptun::wire::rsc::{BuildError, TableBuilder, Vdev, Vring, VIRTIO_ID_RPMSG};

/// Name of the POSIX shm object (`/dev/shm/openamp.shm`).
pub const SHM_NAME: &str = "openamp.shm";
/// Size of the shm object.
pub const SHM_SIZE: usize = 0x80000;
/// Path of the kick socket.
pub const SOCKET_PATH: &str = "/tmp/openamp.event.0";

/// Region offset of the resource table.
pub const TABLE_OFFSET: usize = 0;
/// Length of the resource table the device writes.
pub const TABLE_LEN: usize = 88;
/// Most bytes a peer's table may span (it must end before vring0).
pub const TABLE_MAX_LEN: usize = VRING0_DA as usize;

/// vring0 (driver RX, device TX) address.
pub const VRING0_DA: u32 = 0x4000;
/// vring1 (driver TX, device RX) address.
pub const VRING1_DA: u32 = 0x8000;
/// Entries per vring.
pub const VRING_NUM: u32 = 256;
/// Used-ring alignment.
pub const VRING_ALIGN: u32 = 0x1000;
/// Notify id of the vdev (config changes).
pub const VDEV_NOTIFYID: u32 = 0;
/// Notify ids of vring0 and vring1.
pub const VRING_NOTIFYIDS: [u32; 2] = [1, 2];
/// rpmsg features the device offers: name service only.
pub const DFEATURES: u32 = 1 << 0;

/// Size of every rpmsg buffer, both directions (no BUFSZ feature).
pub const BUFFER_SIZE: usize = 512;
/// Where the driver's buffers start (RX first, then TX).
pub const BUFFERS_OFFSET: usize = 0x10000;
/// Where the driver's TX buffers start (after 256 RX buffers).
pub const TX_BUFFERS_OFFSET: usize = BUFFERS_OFFSET + VRING_NUM as usize * BUFFER_SIZE;

/// Status byte offset in the table (vdev at 20, status at +24).
pub const STATUS_OFFSET: usize = 20 + 24;
/// `gfeatures` offset in the table (vdev at 20, gfeatures at +16).
pub const GFEATURES_OFFSET: usize = 20 + 16;

/// The resource table the virtio device writes at offset 0.
pub fn resource_table() -> Result<[u8; TABLE_LEN], BuildError> {
    let mut buf = [0u8; TABLE_LEN];
    let mut b = TableBuilder::new(&mut buf, 1)?;
    let ring = |da, notifyid| Vring {
        da,
        align: VRING_ALIGN,
        num: VRING_NUM,
        notifyid,
        reserved: 0,
    };
    b.add_vdev(
        &Vdev {
            id: VIRTIO_ID_RPMSG,
            notifyid: VDEV_NOTIFYID,
            dfeatures: DFEATURES,
            gfeatures: 0,
            status: 0,
            // 0: the master (the driver here) is the virtio driver.
            reserved: [0, 0],
        },
        &[
            ring(VRING0_DA, VRING_NOTIFYIDS[0]),
            ring(VRING1_DA, VRING_NOTIFYIDS[1]),
        ],
        &[],
    )?;
    b.finish()?;
    Ok(buf)
}

/// The region range `[start, end)` a legacy vring at `da` spans (to its
/// used ring's last element), or `None` if it cannot be laid out.
pub fn vring_span(da: u32, num: u16, align: u32) -> Option<(usize, usize)> {
    let size = QueueLayout::legacy_size_without_avail_event(u64::from(da), num, align).ok()?;
    let start = da as usize;
    Some((start, start.checked_add(size)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table as OpenAMP's `machine/linux/rsc_table.c` lays it out,
    /// written out field by field (little-endian words).
    fn expected() -> Vec<u8> {
        let words: [u32; 5] = [1, 1, 0, 0, 20]; // ver, num, reserved[2], offset[0]
        let vdev: [u32; 6] = [3, 7, 0, 1, 0, 0]; // type, id, notifyid, dfeat, gfeat, cfglen
        let mut v = Vec::new();
        for w in words.iter().chain(vdev.iter()) {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v.extend_from_slice(&[0, 2, 0, 0]); // status, num_of_vrings, reserved[2]
        for w in [0x4000u32, 0x1000, 256, 1, 0, 0x8000, 0x1000, 256, 2, 0] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v
    }

    #[test]
    fn the_table_is_byte_for_byte_openamps() {
        let t = resource_table().unwrap();
        assert_eq!(t.to_vec(), expected());
        assert_eq!(t[STATUS_OFFSET], 0);
        assert_eq!(&t[GFEATURES_OFFSET..GFEATURES_OFFSET + 4], &[0; 4]);
        assert_eq!(&t[GFEATURES_OFFSET - 4..GFEATURES_OFFSET], &[1, 0, 0, 0]);
    }

    #[test]
    fn the_vrings_end_before_the_buffers() {
        let (s0, e0) = vring_span(VRING0_DA, 256, VRING_ALIGN).unwrap();
        let (s1, e1) = vring_span(VRING1_DA, 256, VRING_ALIGN).unwrap();
        // desc 4096 B, avail 4 + 512 (+2), used at the next 0x1000: + 4 + 2048
        assert_eq!((s0, e0), (0x4000, 0x6804));
        assert_eq!((s1, e1), (0x8000, 0xa804));
        assert!(e0 <= s1 && e1 <= BUFFERS_OFFSET);
        assert_eq!(TX_BUFFERS_OFFSET, 0x30000);
    }
}
