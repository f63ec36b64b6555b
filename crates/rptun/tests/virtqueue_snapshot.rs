//! The split rings of a real NuttX simulator link (tests/vectors/after-boot.bin,
//! decoded in after-boot.txt): our layout finds NuttX's indices and a device
//! attaching to the running ring reads the descriptors NuttX wrote.

use rptun::shm::Region;
use rptun::virtio::queue::*;

static AFTER_BOOT: &[u8] = include_bytes!("vectors/after-boot.bin");
static AFTER_PINGS: &[u8] = include_bytes!("vectors/after-pings.bin");

/// The master's mapping base: descriptor addresses are base + object offset.
const BASE: u64 = 0xf3d5_c000;
const VRING0: usize = 131_532;
const VRING1: usize = 131_756;
const BUF0: usize = 132_000;
const BUF_SIZE: u32 = 1536;

fn copy_of(bytes: &[u8]) -> Region {
    let r = Region::new_heap(bytes.len());
    r.write_bytes(0, bytes).unwrap();
    r
}

fn window(r: &Region) -> Window {
    Window::new(BASE, 0, r.len())
}

fn layout(offset: usize) -> QueueLayout {
    QueueLayout::legacy(offset, BASE + offset as u64, 8, 8).unwrap()
}

#[test]
fn legacy_layout_finds_nuttx_indices() {
    let r = copy_of(AFTER_BOOT);
    let l = layout(VRING0);
    assert_eq!(r.load_u16(l.avail_idx()).unwrap(), 30);
    assert_eq!(r.load_u16(l.avail_flags()).unwrap(), 0);
    assert_eq!(r.load_u16(l.used_idx()).unwrap(), 22);
    assert_eq!(r.load_u16(l.used_flags()).unwrap(), 1);
    for slot in 0..8 {
        assert_eq!(r.read_u16(l.avail_ring(slot)).unwrap(), slot);
    }
    // vring1: avail.flags=1 avail.idx=24 used.flags=0 used.idx=24
    let l1 = layout(VRING1);
    assert_eq!(r.load_u16(l1.avail_flags()).unwrap(), 1);
    assert_eq!(r.load_u16(l1.avail_idx()).unwrap(), 24);
    assert_eq!(r.load_u16(l1.used_flags()).unwrap(), 0);
    assert_eq!(r.load_u16(l1.used_idx()).unwrap(), 24);
    // NuttX packs rings with OpenAMP's vring_size (no avail_event): vring0's
    // avail_event is the low half of vring1's desc[0].addr (0xf3d7f3a0).
    assert_eq!(l.avail_event(), VRING1);
    assert_eq!(r.read_u16(l.avail_event()).unwrap(), 0xf3a0);
    let after_pings = copy_of(AFTER_PINGS);
    assert_eq!(after_pings.load_u16(l.avail_idx()).unwrap(), 1931);
    assert_eq!(after_pings.load_u16(l.used_idx()).unwrap(), 1923);
}

#[test]
fn device_attaching_to_running_vring0_reads_nuttx_descriptors() {
    let r = copy_of(AFTER_BOOT);
    let mut dev = DeviceQueue::new(r.clone(), layout(VRING0), window(&r), false).unwrap();
    let i = dev.indices();
    assert_eq!(
        (i.avail_idx, i.last_avail, i.used_idx, i.in_flight),
        (30, 22, 22, 0)
    );
    // 30 - 22 = 8 chains available: heads ring[22 % 8 ..] = 6, 7, 0, 1, ..., 5;
    // desc[k] is one device-writable 1536-byte buffer at 132000 + 1536 k.
    let mut heads = Vec::new();
    while let Some(c) = dev.pop::<4>().unwrap() {
        let k = c.head();
        assert_eq!(
            c.segs(),
            &[Seg {
                offset: BUF0 + 1536 * usize::from(k),
                len: BUF_SIZE,
                writable: true
            }]
        );
        assert_eq!((c.readable_len(), c.writable_len()), (0, 1536));
        heads.push(k);
    }
    assert_eq!(heads, [6, 7, 0, 1, 2, 3, 4, 5]);
    assert_eq!(dev.in_flight(), 8);
    // The last message carried by desc[0]: rpmsg header src=0x40a dst=0x35.
    let c0 = Seg {
        offset: BUF0,
        len: BUF_SIZE,
        writable: true,
    };
    assert_eq!(r.read_u32(c0.offset).unwrap(), 0x40a);
    assert_eq!(r.read_u32(c0.offset + 4).unwrap(), 0x35);
    // Returning one advances used.idx from 22 to 23 and writes {6, 16}.
    dev.push_used(6, 16).unwrap();
    let l = layout(VRING0);
    assert_eq!(r.load_u16(l.used_idx()).unwrap(), 23);
    assert_eq!(r.read_u32(l.used_elem(22 % 8)).unwrap(), 6);
    assert_eq!(r.read_u32(l.used_elem(22 % 8) + 4).unwrap(), 16);
    // Without EVENT_IDX the device never touches avail_event, which here
    // belongs to vring1.
    dev.enable_notifications().unwrap();
    dev.disable_notifications().unwrap();
    assert_eq!(r.read_u64(VRING1).unwrap(), 0xf3d7_f3a0);
}

#[test]
fn device_attaching_to_vring1_finds_it_idle() {
    let r = copy_of(AFTER_BOOT);
    let mut dev = DeviceQueue::new(r.clone(), layout(VRING1), window(&r), false).unwrap();
    assert!(!dev.has_avail().unwrap());
    assert_eq!(dev.pop::<4>().unwrap().map(|c| c.head()), None);
    // Nothing popped, so nothing can be returned, and the queue stays usable.
    assert_eq!(
        dev.push_used(0, 0),
        Err(QueueError::NotInFlight { head: 0 })
    );
    assert!(!dev.is_broken());
    assert_eq!(dev.indices().used_idx, 24);
}

#[test]
fn driver_init_zeroes_its_ring_but_not_the_next_one() {
    let r = copy_of(AFTER_BOOT);
    let l = layout(VRING0);
    let mut drv = DriverQueue::<8>::new(r.clone(), l, window(&r), false).unwrap();
    for off in [l.avail_idx(), l.used_idx(), l.used_flags(), l.avail_ring(3)] {
        assert_eq!(r.read_u16(off).unwrap(), 0);
    }
    assert_eq!(r.read_u64(l.desc_at(0)).unwrap(), 0);
    // vring1's desc[0] (overlapping vring0's unused avail_event) is intact.
    assert_eq!(r.read_u64(VRING1).unwrap(), 0xf3d7_f3a0);
    assert_eq!(r.read_u32(VRING1 + 8).unwrap(), 1536);
    // Reposting RX buffer 0 as NuttX did produces NuttX's descriptor bytes.
    let head = drv.add(&[], &[Buf::new(BUF0, BUF_SIZE)]).unwrap();
    assert_eq!(head, 0);
    assert!(drv.publish().unwrap());
    let mut d = [0u8; 16];
    r.read_bytes(l.desc_at(0), &mut d).unwrap();
    let mut nuttx = [0u8; 16];
    nuttx.copy_from_slice(&AFTER_BOOT[VRING0..VRING0 + 16]);
    // addr, len and flags agree; `next` of an unchained descriptor is free
    // (NuttX leaves 0x8000 there, we write 0).
    assert_eq!(d[..14], nuttx[..14]);
    assert_eq!(u64::from_le_bytes(d[..8].try_into().unwrap()), 0xf3d7_c3a0);
}
