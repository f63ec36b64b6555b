//! Legacy split-ring layout, address windows and ring constants, checked
//! against hand-computed numbers and the Linux headers (virtio-bindings).

use rptun::shm::Region;
use rptun::virtio::queue::*;

#[test]
fn ring_constants_match_linux_headers() {
    use virtio_bindings::virtio_ring as vr;
    assert_eq!(u32::from(VRING_DESC_F_NEXT), vr::VRING_DESC_F_NEXT);
    assert_eq!(u32::from(VRING_DESC_F_WRITE), vr::VRING_DESC_F_WRITE);
    assert_eq!(u32::from(VRING_DESC_F_INDIRECT), vr::VRING_DESC_F_INDIRECT);
    assert_eq!(
        u32::from(VRING_AVAIL_F_NO_INTERRUPT),
        vr::VRING_AVAIL_F_NO_INTERRUPT
    );
    assert_eq!(
        u32::from(VRING_USED_F_NO_NOTIFY),
        vr::VRING_USED_F_NO_NOTIFY
    );
    assert_eq!(VIRTIO_RING_F_EVENT_IDX, vr::VIRTIO_RING_F_EVENT_IDX);
    assert_eq!(VIRTIO_RING_F_INDIRECT_DESC, vr::VIRTIO_RING_F_INDIRECT_DESC);
    assert_eq!(DESC_SIZE, core::mem::size_of::<vr::vring_desc>());
}

#[test]
fn num8_align8_at_pa0() {
    // desc 8*16 = 128 B at 0; avail at 128: flags 2 + idx 2 + ring 16 + used_event 2
    // = 22 B, ends at 150; used at the next multiple of 8 = 152: flags 2 + idx 2 +
    // 8*8 = 68 B, ends at 220; avail_event 220..222.
    let l = QueueLayout::legacy(0, 0, 8, 8).unwrap();
    assert_eq!(
        l,
        QueueLayout {
            desc: 0,
            avail: 128,
            used: 152,
            num: 8
        }
    );
    assert_eq!(l.avail_idx(), 130);
    assert_eq!(l.avail_ring(7), 146);
    assert_eq!(l.used_event(), 148);
    assert_eq!(l.used_idx(), 154);
    assert_eq!(l.used_elem(1), 164);
    assert_eq!(l.avail_event(), 220);
    assert_eq!(l.desc_at(3), 48);
    assert_eq!(QueueLayout::legacy_size(0, 8, 8).unwrap(), 222);
    assert_eq!(
        QueueLayout::legacy_size_without_avail_event(0, 8, 8).unwrap(),
        220
    );
}

#[test]
fn alignment_is_of_the_physical_address_not_the_offset() {
    // The NuttX simulator's rpmsg vring0: region offset 131532, pa
    // 0xf3d5c000 + 131532 = 0xf3d7c1cc (4 mod 8). avail ends at 131532+150 =
    // 131682, pa 2 mod 8 -> used at 131688 (6 bytes of padding, not 2).
    let pa = 0xf3d5_c000u64 + 131_532;
    let l = QueueLayout::legacy(131_532, pa, 8, 8).unwrap();
    assert_eq!((l.desc, l.avail, l.used), (131_532, 131_660, 131_688));
    // 156 + 68 + 2: OpenAMP's vring_size (without avail_event) is 224, which
    // is exactly where NuttX put vring1 (131756).
    assert_eq!(QueueLayout::legacy_size(pa, 8, 8).unwrap(), 226);
    assert_eq!(
        QueueLayout::legacy_size_without_avail_event(pa, 8, 8).unwrap(),
        224
    );
    // The same ring at an 8-aligned physical address needs no such padding.
    let l = QueueLayout::legacy(131_532, 0x1000, 8, 8).unwrap();
    assert_eq!(l.used, 131_532 + 152);
}

#[test]
fn align4096_at_a_nonzero_unaligned_pa() {
    // num 256 at pa 0x8000_0100, region offset 0x300: desc 4096 B, avail at
    // +0x1000 = 0x1300 (pa 0x8000_1100) with 4+512+2 = 518 B ending at pa
    // 0x8000_1306; used at pa 0x8000_2000 = ring start + 0x1f00 = offset 0x2200.
    let l = QueueLayout::legacy(0x300, 0x8000_0100, 256, 4096).unwrap();
    assert_eq!((l.desc, l.avail, l.used), (0x300, 0x1300, 0x2200));
    assert_eq!(l.avail_event(), 0x2200 + 4 + 2048);
    // 0x1f00 + 4 + 2048 + 2
    assert_eq!(
        QueueLayout::legacy_size(0x8000_0100, 256, 4096).unwrap(),
        9990
    );
    // OpenAMP's Linux demo ring at 0x4000: used at 0x6000; Linux's
    // vring_size(256, 4096) = 8192 + 6 + 2048 = 10246.
    let l = QueueLayout::legacy(0x4000, 0x4000, 256, 4096).unwrap();
    assert_eq!((l.avail, l.used), (0x5000, 0x6000));
    assert_eq!(QueueLayout::legacy_size(0x4000, 256, 4096).unwrap(), 10246);
}

#[test]
fn smallest_and_largest_rings() {
    // num 1, align 4: desc 16, avail 16..24, used at 24, size 24+4+8+2.
    let l = QueueLayout::legacy(0, 0, 1, 4).unwrap();
    assert_eq!((l.avail, l.used), (16, 24));
    assert_eq!(QueueLayout::legacy_size(0, 1, 4).unwrap(), 38);
    // num 32768, align 4096: desc 512 KiB, avail 4+65536+2 -> used at
    // 524288 + 65542 rounded up to 4096 = 593920, + 4 + 262144 + 2.
    let l = QueueLayout::legacy(0, 0, 32768, 4096).unwrap();
    assert_eq!((l.avail, l.used), (524_288, 593_920));
    assert_eq!(
        QueueLayout::legacy_size(0, 32768, 4096).unwrap(),
        593_920 + 262_150
    );
}

#[test]
fn bad_sizes_alignments_and_addresses_are_rejected() {
    for num in [0u16, 3, 12, 40000, 65535] {
        assert!(
            matches!(
                QueueLayout::legacy(0, 0, num, 8),
                Err(QueueError::BadSize { .. })
            ),
            "num {num}"
        );
    }
    for align in [0u32, 1, 2, 3, 6, 4097] {
        assert_eq!(
            QueueLayout::legacy(0, 0, 8, align),
            Err(QueueError::BadAlign { align }),
            "align {align}"
        );
    }
    assert_eq!(
        QueueLayout::legacy(0, 0x1001, 8, 8),
        Err(QueueError::BadRingAddr { pa: 0x1001 })
    );
    let high = u64::MAX - 100;
    assert_eq!(
        QueueLayout::legacy(0, high - 1, 8, 8),
        Err(QueueError::BadRingAddr { pa: high - 1 })
    );
    assert!(QueueLayout::legacy(usize::MAX - 100, 0, 8, 8).is_err());
    assert!(QueueLayout::legacy_size(high - 1, 8, 8).is_err());
}

#[test]
fn window_translation_is_bounded() {
    let w = Window::new(0x1000_0000, 0x100, 0x1000);
    assert_eq!(w.to_offset(0x1000_0000, 16), Ok(0x100));
    assert_eq!(w.to_offset(0x1000_0ff0, 16), Ok(0x10f0));
    assert_eq!(w.to_offset(0x1000_1000, 0), Ok(0x1100));
    let out = |addr, len| Err(QueueError::AddrOutOfWindow { addr, len });
    assert_eq!(w.to_offset(0x1000_0ff1, 16), out(0x1000_0ff1, 16));
    assert_eq!(w.to_offset(0x0fff_ffff, 1), out(0x0fff_ffff, 1));
    assert_eq!(w.to_offset(u64::MAX - 3, 16), out(u64::MAX - 3, 16));
    assert_eq!(w.to_pa(0x100), Ok(0x1000_0000));
    assert_eq!(w.to_pa(0x10ff), Ok(0x1000_0fff));
    assert!(w.to_pa(0x1100).is_err());
    assert!(w.to_pa(0xff).is_err());
    assert_eq!(w.to_pa_range(0x1000, 0x100), Ok(0x1000_0f00));
    assert!(w.to_pa_range(0x1000, 0x101).is_err());
    assert!(w.to_pa_range(0x1000, usize::MAX).is_err());
    assert_eq!(w.to_pa_range(0x1100, 0), Ok(0x1000_1000));
    assert!(w.check(0x1100).is_ok());
    assert!(w.check(0x10ff).is_err());
    assert!(Window::new(u64::MAX - 10, 0, 0x100).check(0x1000).is_err());
}

#[test]
fn queues_refuse_layouts_that_do_not_fit_the_region() {
    let r = Region::new_heap(256);
    let w = Window::new(0, 0, 256);
    // 222 bytes needed with avail_event; 220 without (at an 8-aligned pa).
    let at = |off| QueueLayout::legacy(off, off as u64, 8, 8).unwrap();
    assert!(DriverQueue::<8>::new(r.clone(), at(32), w, false).is_ok());
    assert!(matches!(
        DriverQueue::<8>::new(r.clone(), at(40), w, false),
        Err(QueueError::Shm(_))
    ));
    // align 4 at 38: used at 188, ends at 256 without avail_event, 258 with it.
    let tight = QueueLayout::legacy(38, 38, 8, 4).unwrap();
    assert_eq!(tight.used, 188);
    assert!(matches!(
        DeviceQueue::new(r.clone(), tight, w, true),
        Err(QueueError::Shm(_))
    ));
    assert!(DeviceQueue::new(r.clone(), tight, w, false).is_ok());
    assert!(DriverQueue::<8>::new(r.clone(), tight, w, false).is_ok());
    // More entries than the driver's shadow holds.
    assert_eq!(
        DriverQueue::<4>::new(r.clone(), at(0), w, false).err(),
        Some(QueueError::BadSize { num: 8, max: 4 })
    );
    // A window larger than the region.
    assert!(matches!(
        DeviceQueue::new(r.clone(), at(0), Window::new(0, 0, 257), false),
        Err(QueueError::BadWindow { .. })
    ));
    // Index fields at odd addresses cannot be accessed atomically.
    let odd = QueueLayout {
        desc: 0,
        avail: 129,
        used: 153,
        num: 8,
    };
    assert!(matches!(
        DeviceQueue::new(r, odd, w, false),
        Err(QueueError::Shm(rptun::shm::ShmError::Misaligned { .. }))
    ));
}

#[test]
fn need_event_matches_the_virtio_formula() {
    // event in [old, new) modulo 2^16
    assert!(vring_need_event(5, 6, 5));
    assert!(!vring_need_event(6, 6, 5));
    assert!(!vring_need_event(4, 6, 5));
    assert!(vring_need_event(65535, 1, 65534));
    assert!(vring_need_event(0, 1, 65534));
    assert!(!vring_need_event(1, 1, 65534));
    assert!(!vring_need_event(3, 3, 3));
}
