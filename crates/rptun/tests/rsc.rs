//! Resource table: hand-derived vectors, the NuttX simulator snapshot, and
//! one test per malformed-table case.

use rptun::wire::rpmsg_config::{ConfigLayout, CpuName, RpmsgConfig};
use rptun::wire::rsc::*;

/// A one-vdev rpmsg table with two vrings, 64 bytes of config space (current
/// layout) and a carveout, written out by hand from DESIGN.md §4.
fn hand_table() -> Vec<u8> {
    [
        // header @0: ver 1, num 2, reserved 0, 0
        &[0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00][..],
        &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
        // offset[0] = 24 (vdev), offset[1] = 156 (carveout)
        &[0x18, 0x00, 0x00, 0x00, 0x9c, 0x00, 0x00, 0x00],
        // vdev @24: type 3, id 7, notifyid 0, dfeatures 0x1d, gfeatures 0,
        // config_len 64, status 0, num_of_vrings 2, reserved [1, 0]
        &[0x03, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00],
        &[0x00, 0x00, 0x00, 0x00, 0x1d, 0x00, 0x00, 0x00],
        &[0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00],
        &[0x00, 0x02, 0x01, 0x00],
        // vring[0] @52: da ANY, align 16, num 8, notifyid 1, reserved 0
        &[0xff, 0xff, 0xff, 0xff, 0x10, 0x00, 0x00, 0x00, 0x08, 0x00],
        &[0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
        // vring[1] @72: da 0x20001000, align 16, num 8, notifyid 2, reserved 0
        &[0x00, 0x10, 0x00, 0x20, 0x10, 0x00, 0x00, 0x00, 0x08, 0x00],
        &[0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
        // config @92: h2r_buf_size 0x600, r2h_buf_size 0x200,
        // h2r_buf_addr 0x1_0000_2000, r2h_buf_addr 0x3000,
        // host "ap", remote "cp", reserved[6] zero
        &[0x00, 0x06, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00],
        &[0x00, 0x20, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00],
        &[0x00, 0x30, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
        &[b'a', b'p', 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
        &[b'c', b'p', 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
        &[0x00; 24],
        // carveout @156: type 0, da 0x20000000, pa ANY, len 0x10000,
        // flags 0, reserved 0, name "vdev0buffer"
        &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20],
        &[0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x01, 0x00],
        &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
        b"vdev0buffer",
        &[0x00; 21],
    ]
    .concat()
}

fn hand_config() -> RpmsgConfig {
    RpmsgConfig {
        h2r_buf_size: 0x600,
        r2h_buf_size: 0x200,
        h2r_buf_addr: 0x1_0000_2000,
        r2h_buf_addr: 0x3000,
        host_cpuname: CpuName::new("ap").unwrap(),
        remote_cpuname: CpuName::new("cp").unwrap(),
    }
}

fn hand_vdev() -> Vdev {
    Vdev {
        id: VIRTIO_ID_RPMSG,
        notifyid: 0,
        dfeatures: 0x1d,
        gfeatures: 0,
        status: 0,
        reserved: [1, 0],
    }
}

fn hand_vrings() -> [Vring; 2] {
    [
        Vring {
            da: ANY,
            align: 16,
            num: 8,
            notifyid: 1,
            reserved: 0,
        },
        Vring {
            da: 0x2000_1000,
            align: 16,
            num: 8,
            notifyid: 2,
            reserved: 0,
        },
    ]
}

fn hand_carveout() -> Carveout {
    Carveout {
        da: 0x2000_0000,
        pa: ANY,
        len: 0x10000,
        flags: 0,
        reserved: 0,
        name: Name::new("vdev0buffer").unwrap(),
    }
}

fn build_hand(b: &mut TableBuilder<'_>) {
    let config = hand_config().to_bytes(ConfigLayout::Current).unwrap();
    assert_eq!(b.add_vdev(&hand_vdev(), &hand_vrings(), &config), Ok(24));
    assert_eq!(b.add_carveout(&hand_carveout()), Ok(156));
}

fn strict() -> ParseOptions {
    ParseOptions::default()
}

fn parse_err(bytes: &[u8]) -> RscError {
    ResourceTable::parse(bytes, &strict()).unwrap_err()
}

fn set_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn hand_table_is_212_bytes() {
    assert_eq!(hand_table().len(), 212);
}

#[test]
fn builder_emits_hand_table_into_slice() {
    // Garbage in the buffer must not leak into the table.
    let mut buf = [0xAAu8; 300];
    let mut b = TableBuilder::new(&mut buf, 2).unwrap();
    build_hand(&mut b);
    assert_eq!(b.position(), 212);
    assert_eq!(b.finish(), Ok(212));
    assert_eq!(&buf[..212], &hand_table()[..]);
    assert_eq!(buf[212], 0xAA, "the builder wrote past the table");
}

#[test]
fn builder_emits_hand_table_into_vec() {
    let mut b = TableBuilder::new_vec(2).unwrap();
    build_hand(&mut b);
    assert_eq!(b.finish_vec().unwrap(), hand_table());
}

#[test]
fn parser_reads_hand_table_with_field_offsets() {
    let bytes = hand_table();
    let table = ResourceTable::parse(&bytes, &strict()).unwrap();
    assert_eq!(table.num_entries(), 2);
    assert_eq!(table.reserved(), [0, 0]);
    assert_eq!(table.extent(), 212);

    let Some(Entry::Vdev(vdev)) = table.entry(0) else {
        panic!("entry 0 is not a vdev: {:?}", table.entry(0));
    };
    assert_eq!(vdev.value, hand_vdev());
    assert_eq!(vdev.offset, 24);
    assert_eq!(vdev.notifyid_offset(), 32);
    assert_eq!(vdev.dfeatures_offset(), 36);
    assert_eq!(vdev.gfeatures_offset(), 40);
    assert_eq!(vdev.status_offset(), 48);
    assert_eq!(vdev.reserved_offset(), 50);
    assert_eq!(vdev.config_offset(), 92);
    assert_eq!(vdev.config().len(), 64);
    assert_eq!(vdev.size(), 132);
    assert_eq!(vdev.num_vrings(), 2);
    let rings: Vec<_> = vdev.vrings().collect();
    assert_eq!(rings.len(), 2);
    assert_eq!(rings[0].value, hand_vrings()[0]);
    assert_eq!(rings[1].value, hand_vrings()[1]);
    assert_eq!(
        (
            rings[0].da_offset(),
            rings[0].align_offset(),
            rings[0].num_offset(),
            rings[0].notifyid_offset()
        ),
        (52, 56, 60, 64)
    );
    assert_eq!(
        (
            rings[1].da_offset(),
            rings[1].align_offset(),
            rings[1].num_offset(),
            rings[1].notifyid_offset()
        ),
        (72, 76, 80, 84)
    );
    assert_eq!(vdev.vring(2), None);
    assert_eq!(
        RpmsgConfig::parse(vdev.config(), ConfigLayout::Current),
        Ok(hand_config())
    );

    let Some(Entry::Carveout(c)) = table.entry(1) else {
        panic!("entry 1 is not a carveout");
    };
    assert_eq!(c.value, hand_carveout());
    assert_eq!(c.name.as_str(), Some("vdev0buffer"));
    assert_eq!(
        (c.offset, c.da_offset(), c.pa_offset(), c.len_offset()),
        (156, 160, 164, 168)
    );
    assert_eq!(table.entry(2), None);
    assert_eq!(table.entries().count(), 2);
    assert_eq!(table.vdevs().count(), 1);
    assert_eq!(table.carveouts().count(), 1);
}

#[test]
fn live_field_offsets_address_the_bytes_they_name() {
    // Writing through the recorded offsets changes exactly those fields.
    let mut bytes = hand_table();
    let (status, gfeatures, ring1_da) = {
        let table = ResourceTable::parse(&bytes, &strict()).unwrap();
        let vdev = table.vdevs().next().unwrap();
        let ring1 = vdev.vring(1).unwrap();
        (
            vdev.status_offset(),
            vdev.gfeatures_offset(),
            ring1.da_offset(),
        )
    };
    bytes[status] = VIRTIO_STATUS_DRIVER_OK;
    set_u32(&mut bytes, gfeatures, 0x5);
    set_u32(&mut bytes, ring1_da, 0x1234_5678);
    let table = ResourceTable::parse(&bytes, &strict()).unwrap();
    let vdev = table.vdevs().next().unwrap();
    assert_eq!(vdev.status, VIRTIO_STATUS_DRIVER_OK);
    assert_eq!(vdev.gfeatures, 0x5);
    assert_eq!(vdev.vring(1).unwrap().da, 0x1234_5678);
    assert_eq!(vdev.vring(0).unwrap().value, hand_vrings()[0]);
}

// ---------------------------------------------------------------------------
// NuttX simulator snapshot (tests/vectors/after-boot.txt)

const SNAP_TABLE: usize = 0x18;

fn snapshot() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/after-boot.bin");
    let bytes = std::fs::read(path).expect("read after-boot.bin");
    assert_eq!(bytes.len(), 197_072);
    bytes
}

struct SnapVdev {
    rsc_off: usize,
    id: u32,
    notifyid: u32,
    features: u32,
    config_len: usize,
    vrings: &'static [(u32, u32)], // (da, notifyid); align 8, num 8
}

/// The entries as decoded in after-boot.txt: vdev/carveout pairs.
const SNAP_VDEVS: [SnapVdev; 3] = [
    SnapVdev {
        rsc_off: 40,
        id: VIRTIO_ID_ENTROPY,
        notifyid: 0,
        features: 0,
        config_len: 0,
        vrings: &[(0xa8, 1)],
    },
    SnapVdev {
        rsc_off: 65680,
        id: VIRTIO_ID_ENTROPY,
        notifyid: 2,
        features: 0,
        config_len: 0,
        vrings: &[(0x10110, 3)],
    },
    SnapVdev {
        rsc_off: 131320,
        id: VIRTIO_ID_RPMSG,
        notifyid: 4,
        features: 0xf,
        config_len: 64,
        vrings: &[(0x201cc, 5), (0x202ac, 6)],
    },
];
/// (rsc_off, da, name) of the carveouts; pa ANY, len 64 KiB, flags 0.
const SNAP_CARVEOUTS: [(usize, u32, &str); 3] = [
    (88, 0xa8, "rng0_shm"),
    (65728, 0x10110, "rng1_shm"),
    (131452, 0x201cc, "rpmsg0_shm"),
];

fn snap_config() -> RpmsgConfig {
    RpmsgConfig {
        h2r_buf_size: 1536,
        r2h_buf_size: 1536,
        h2r_buf_addr: 0,
        r2h_buf_addr: 0,
        host_cpuname: CpuName::new("server").unwrap(),
        remote_cpuname: CpuName::new("proxy").unwrap(),
    }
}

#[test]
fn parses_nuttx_simulator_table() {
    let snap = snapshot();
    let table = ResourceTable::parse(&snap[SNAP_TABLE..], &strict()).unwrap();
    assert_eq!(table.num_entries(), 6);
    assert_eq!(table.reserved(), [0, 0]);
    let entries: Vec<Entry<'_>> = table.entries().collect();
    assert_eq!(entries.len(), 6);
    for (i, want) in SNAP_VDEVS.iter().enumerate() {
        let Entry::Vdev(v) = entries[2 * i] else {
            panic!("entry {} is not a vdev: {:?}", 2 * i, entries[2 * i]);
        };
        assert_eq!(v.offset, want.rsc_off);
        assert_eq!(v.id, want.id);
        assert_eq!(v.notifyid, want.notifyid);
        assert_eq!(v.dfeatures, want.features);
        assert_eq!(v.gfeatures, want.features);
        assert_eq!(v.status, VIRTIO_STATUS_DRIVER_OK);
        assert_eq!(v.reserved, [0, 0]);
        assert_eq!(v.config().len(), want.config_len);
        assert_eq!(v.num_vrings(), want.vrings.len());
        for (ring, &(da, notifyid)) in v.vrings().zip(want.vrings) {
            assert_eq!((ring.da, ring.align, ring.num), (da, 8, 8));
            assert_eq!(ring.notifyid, notifyid);
        }

        let Entry::Carveout(c) = entries[2 * i + 1] else {
            panic!("entry {} is not a carveout", 2 * i + 1);
        };
        let (rsc_off, da, name) = SNAP_CARVEOUTS[i];
        assert_eq!(c.offset, rsc_off);
        assert_eq!((c.da, c.pa, c.len, c.flags), (da, ANY, 0x10000, 0));
        assert_eq!(c.name.as_str(), Some(name));
        // The carveout's memory is embedded right after its entry: da is the
        // offset in the shm object.
        assert_eq!(da as usize, SNAP_TABLE + c.offset + CARVEOUT_LEN);
    }

    let rpmsg = table.vdevs().nth(2).unwrap();
    assert_eq!(SNAP_TABLE + rpmsg.config_offset(), 131412);
    assert_eq!(
        RpmsgConfig::parse(rpmsg.config(), ConfigLayout::Current),
        Ok(snap_config())
    );
    // The table's last entry ends where the rpmsg carveout's memory starts.
    assert_eq!(SNAP_TABLE + table.extent(), 0x201cc);
}

/// Rebuilds the simulator's table from the decoded values, with each
/// carveout's memory reserved right after its entry as NuttX lays it out.
fn build_snapshot_table() -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
    let mut b = TableBuilder::new_vec(6).unwrap();
    let mut memory = Vec::new();
    let config = snap_config().to_bytes(ConfigLayout::Current).unwrap();
    for (i, want) in SNAP_VDEVS.iter().enumerate() {
        let vdev = Vdev {
            id: want.id,
            notifyid: want.notifyid,
            dfeatures: want.features,
            gfeatures: want.features,
            status: VIRTIO_STATUS_DRIVER_OK,
            reserved: [0, 0],
        };
        let vrings: Vec<Vring> = want
            .vrings
            .iter()
            .map(|&(da, notifyid)| Vring {
                da,
                align: 8,
                num: 8,
                notifyid,
                reserved: 0,
            })
            .collect();
        let cfg = &config[..want.config_len];
        assert_eq!(b.add_vdev(&vdev, &vrings, cfg), Ok(want.rsc_off));
        let (rsc_off, da, name) = SNAP_CARVEOUTS[i];
        let carveout = Carveout {
            da,
            pa: ANY,
            len: 0x10000,
            flags: 0,
            reserved: 0,
            name: Name::new(name).unwrap(),
        };
        assert_eq!(b.add_carveout(&carveout), Ok(rsc_off));
        // The first two carveouts' memory lies between entries; the last one
        // follows the table.
        if i < 2 {
            let at = b.reserve(0x10000).unwrap();
            assert_eq!(at + SNAP_TABLE, da as usize);
            memory.push(at..at + 0x10000);
        }
    }
    (b.finish_vec().unwrap(), memory)
}

#[test]
#[cfg_attr(
    miri,
    ignore = "byte-by-byte comparison of a 131 KiB table takes minutes under Miri; \
              safe slice code only, parsing the same table runs in parses_nuttx_simulator_table"
)]
fn builder_recreates_nuttx_simulator_table() {
    let snap = snapshot();
    let parsed = ResourceTable::parse(&snap[SNAP_TABLE..], &strict()).unwrap();
    let (built, memory) = build_snapshot_table();
    assert_eq!(built.len(), parsed.extent());
    let region = &snap[SNAP_TABLE..SNAP_TABLE + built.len()];
    // Byte-equal everywhere except inside the embedded carveout memory
    // (which holds live vrings, not table fields).
    let in_memory = |i: usize| memory.iter().any(|r| r.contains(&i));
    let diffs: Vec<usize> = (0..built.len())
        .filter(|&i| !in_memory(i) && built[i] != region[i])
        .collect();
    assert!(diffs.is_empty(), "table bytes differ at offsets {diffs:?}");
    assert!(memory
        .iter()
        .all(|r| built[r.clone()].iter().all(|&b| b == 0)));
    // The rebuilt table parses to the same entries.
    let rebuilt = ResourceTable::parse(&built, &strict()).unwrap();
    assert!(rebuilt.entries().eq(parsed.entries()));
}

// ---------------------------------------------------------------------------
// Other entry kinds

#[test]
fn trace_devmem_vendor_and_unknown_entries_round_trip() {
    let mut buf = [0u8; 256];
    let mut b = TableBuilder::new(&mut buf, 4).unwrap();
    let devmem = Carveout {
        da: 0x4000_0000,
        pa: 0x4000_0000,
        len: 0x1000,
        flags: 3,
        reserved: 0,
        name: Name::new("uart").unwrap(),
    };
    let trace = Trace {
        da: 0x1000,
        len: 0x400,
        reserved: 0,
        name: Name::new("trace0").unwrap(),
    };
    assert_eq!(b.add_devmem(&devmem), Ok(32));
    assert_eq!(b.add_trace(&trace), Ok(88));
    assert_eq!(
        b.add_vendor(RSC_VENDOR_START + 1, &[1, 2, 3, 4, 5]),
        Ok(136)
    );
    b.reserve(3).unwrap(); // padding: belongs to the vendor entry on parse
    assert_eq!(b.add_vendor(RSC_VENDOR_END, &[9; 8]), Ok(148));
    let len = b.finish().unwrap();
    assert_eq!(len, 160);
    // Byte-level spot checks from the format.
    assert_eq!(&buf[32..36], &RSC_DEVMEM.to_le_bytes());
    assert_eq!(&buf[88..92], &RSC_TRACE.to_le_bytes());
    assert_eq!(&buf[92..96], &0x1000u32.to_le_bytes());
    assert_eq!(&buf[104..110], b"trace0");
    assert_eq!(&buf[136..140], &129u32.to_le_bytes());

    // Turn the last entry into an unknown type (5).
    set_u32(&mut buf, 148, 5);
    let table = ResourceTable::parse(&buf[..len], &strict()).unwrap();
    let e: Vec<_> = table.entries().collect();
    assert_eq!(
        e[0],
        Entry::Devmem(Located {
            offset: 32,
            value: devmem
        })
    );
    assert_eq!(
        e[1],
        Entry::Trace(Located {
            offset: 88,
            value: trace
        })
    );
    let Entry::Trace(t) = e[1] else {
        unreachable!()
    };
    assert_eq!(t.da_offset(), 92);
    assert_eq!(
        e[2],
        Entry::Vendor(RawEntry {
            offset: 136,
            rsc_type: 129,
            body: &[1, 2, 3, 4, 5, 0, 0, 0],
        })
    );
    assert_eq!(
        e[3],
        Entry::Unknown(RawEntry {
            offset: 148,
            rsc_type: 5,
            body: &[9; 8],
        })
    );
    assert_eq!(e[3].size(), 12);
    assert_eq!(e[3].rsc_type(), 5);
    assert_eq!(table.extent(), 160);
}

#[test]
fn vendor_entry_ends_at_next_entry_by_offset_not_by_index() {
    // Vendor entry @24..40, carveout @40..96; then swap the offset array so
    // the vendor entry is the last by index. Its body must still stop where
    // the carveout starts (the next entry by offset).
    let mut buf = [0u8; 128];
    let mut b = TableBuilder::new(&mut buf, 2).unwrap();
    b.add_vendor(300, &[7; 12]).unwrap(); // @24..40
    b.add_carveout(&Carveout::default()).unwrap(); // @40..96
    let len = b.finish().unwrap();
    let mut swapped = buf[..len].to_vec();
    set_u32(&mut swapped, 16, 40);
    set_u32(&mut swapped, 20, 24);
    let table = ResourceTable::parse(&swapped, &strict()).unwrap();
    let Some(Entry::Vendor(v)) = table.entry(1) else {
        panic!("entry 1 is not vendor")
    };
    assert_eq!((v.offset, v.body), (24, &[7u8; 12][..]));
}

#[test]
fn names_without_nul_or_with_bad_utf8() {
    let full = Name::new("abcdefghijklmnopqrstuvwxyz012345").unwrap();
    assert_eq!(full.as_str(), Some("abcdefghijklmnopqrstuvwxyz012345"));
    assert_eq!(full.as_bytes().len(), 32);
    assert_eq!(
        Name::new("abcdefghijklmnopqrstuvwxyz0123456"),
        Err(BuildError::NameTooLong { len: 33 })
    );
    assert_eq!(Name::new("a\0b"), Err(BuildError::NameHasNul));

    let mut raw = [0xFFu8; 32];
    let bad = Name::from_raw(raw);
    assert_eq!(bad.as_str(), None);
    assert_eq!(bad.as_bytes(), &[0xFF; 32][..]);
    raw[..4].copy_from_slice(b"rng\0");
    let garbage_after_nul = Name::from_raw(raw);
    assert_eq!(garbage_after_nul.as_str(), Some("rng"));
    assert_eq!(garbage_after_nul.raw(), &raw);

    // A 32-byte name survives a round trip through a table.
    let mut bytes = hand_table();
    bytes[180..212].copy_from_slice(full.raw());
    let table = ResourceTable::parse(&bytes, &strict()).unwrap();
    assert_eq!(table.carveouts().next().unwrap().name, full);
}

// ---------------------------------------------------------------------------
// Malformed tables: one test per case.

#[test]
fn rejects_table_shorter_than_header() {
    assert_eq!(
        parse_err(&hand_table()[..15]),
        RscError::TooShort { len: 15 }
    );
}

#[test]
fn rejects_bad_version() {
    for ver in [0, 2, 0x0100_0000] {
        let mut bytes = hand_table();
        set_u32(&mut bytes, 0, ver);
        assert_eq!(parse_err(&bytes), RscError::BadVersion { ver });
    }
}

#[test]
fn rejects_nonzero_reserved_only_when_required() {
    let mut bytes = hand_table();
    set_u32(&mut bytes, CMD_MASTER_OFFSET, (2 << 16) | 1); // PANIC pending
    assert_eq!(
        parse_err(&bytes),
        RscError::ReservedNotZero {
            word0: 0x2_0001,
            word1: 0
        }
    );
    let lenient = ParseOptions {
        require_zero_reserved: false,
        ..ParseOptions::default()
    };
    let table = ResourceTable::parse(&bytes, &lenient).unwrap();
    assert_eq!(table.reserved(), [0x2_0001, 0]);
    assert_eq!(table.entries().count(), 2);
}

#[test]
fn rejects_num_whose_offset_array_does_not_fit() {
    let mut bytes = hand_table();
    set_u32(&mut bytes, 4, 50); // 16 + 200 > 212
    assert_eq!(
        parse_err(&bytes),
        RscError::OffsetArrayTruncated { num: 50, len: 212 }
    );
}

#[test]
fn rejects_num_above_limit() {
    let mut bytes = hand_table();
    set_u32(&mut bytes, 4, u32::MAX);
    assert_eq!(
        parse_err(&bytes),
        RscError::TooManyEntries {
            num: u32::MAX,
            max: ParseOptions::DEFAULT_MAX_ENTRIES
        }
    );
    let tight = ParseOptions {
        max_entries: 1,
        ..ParseOptions::default()
    };
    assert_eq!(
        ResourceTable::parse(&hand_table(), &tight).unwrap_err(),
        RscError::TooManyEntries { num: 2, max: 1 }
    );
}

#[test]
fn rejects_offset_outside_table() {
    for offset in [212, 210, u32::MAX] {
        let mut bytes = hand_table();
        set_u32(&mut bytes, 20, offset);
        assert_eq!(
            parse_err(&bytes),
            RscError::OffsetOutOfBounds {
                index: 1,
                offset,
                len: 212
            }
        );
    }
}

#[test]
fn rejects_offset_into_header() {
    let mut bytes = hand_table();
    set_u32(&mut bytes, 16, 4);
    assert_eq!(
        parse_err(&bytes),
        RscError::OffsetInHeader {
            index: 0,
            offset: 4,
            min: 24
        }
    );
}

#[test]
fn rejects_offset_into_offset_array() {
    let mut bytes = hand_table();
    set_u32(&mut bytes, 20, 20);
    assert_eq!(
        parse_err(&bytes),
        RscError::OffsetInHeader {
            index: 1,
            offset: 20,
            min: 24
        }
    );
}

#[test]
fn rejects_truncated_vdev() {
    let bytes = hand_table();
    assert_eq!(
        parse_err(&bytes[..44]),
        RscError::EntryTruncated {
            index: 0,
            rsc_type: RSC_VDEV,
            need: VDEV_LEN,
            avail: 20
        }
    );
}

#[test]
fn rejects_truncated_carveout() {
    let bytes = hand_table();
    assert_eq!(
        parse_err(&bytes[..211]),
        RscError::EntryTruncated {
            index: 1,
            rsc_type: RSC_CARVEOUT,
            need: CARVEOUT_LEN,
            avail: 55
        }
    );
}

#[test]
fn rejects_vring_count_overflowing_table() {
    let mut bytes = hand_table();
    bytes[49] = 200; // num_of_vrings
    assert_eq!(
        parse_err(&bytes),
        RscError::VringsTruncated {
            index: 0,
            count: 200,
            need: 4000,
            avail: 160
        }
    );
}

#[test]
fn rejects_config_len_overflowing_table() {
    for config_len in [121, 0xFFFF_FFF0] {
        let mut bytes = hand_table();
        set_u32(&mut bytes, 44, config_len);
        assert_eq!(
            parse_err(&bytes),
            RscError::ConfigTruncated {
                index: 0,
                config_len,
                avail: 120
            }
        );
    }
}

#[test]
fn rejects_vdev_growing_into_next_entry() {
    // Three vrings still fit in the table, but the vdev then overlaps the
    // carveout: the transport's writes would corrupt it.
    let mut bytes = hand_table();
    bytes[49] = 3;
    assert_eq!(parse_err(&bytes), RscError::Overlap { index: 0, other: 1 });
}

#[test]
fn rejects_duplicate_offsets() {
    let mut bytes = hand_table();
    set_u32(&mut bytes, 20, 24);
    assert_eq!(parse_err(&bytes), RscError::Overlap { index: 0, other: 1 });
}

// ---------------------------------------------------------------------------
// Builder errors

#[test]
fn builder_refuses_small_buffer() {
    let mut buf = [0u8; 100];
    assert_eq!(
        TableBuilder::new(&mut buf, 30).err(),
        Some(BuildError::BufferTooSmall {
            need: 136,
            have: 100
        })
    );
    let mut b = TableBuilder::new(&mut buf, 2).unwrap();
    let config = [0u8; 64];
    assert_eq!(
        b.add_vdev(&hand_vdev(), &hand_vrings(), &config),
        Err(BuildError::BufferTooSmall {
            need: 156,
            have: 100
        })
    );
}

#[test]
fn builder_enforces_declared_entry_count() {
    let mut b = TableBuilder::new_vec(1).unwrap();
    b.add_carveout(&hand_carveout()).unwrap();
    assert_eq!(
        b.add_carveout(&hand_carveout()),
        Err(BuildError::TooManyEntries { declared: 1 })
    );
    let mut b = TableBuilder::new_vec(2).unwrap();
    b.add_carveout(&hand_carveout()).unwrap();
    assert_eq!(
        b.finish_vec(),
        Err(BuildError::MissingEntries {
            declared: 2,
            added: 1
        })
    );
}

#[test]
fn builder_refuses_non_vendor_type_and_too_many_vrings() {
    let mut b = TableBuilder::new_vec(1).unwrap();
    for rsc_type in [RSC_VDEV, 127, 513] {
        assert_eq!(
            b.add_vendor(rsc_type, &[]),
            Err(BuildError::NotVendorType { rsc_type })
        );
    }
    let vrings = [Vring::default(); 256];
    assert_eq!(
        b.add_vdev(&Vdev::default(), &vrings, &[]),
        Err(BuildError::TooManyVrings { count: 256 })
    );
    assert!(b.add_vdev(&Vdev::default(), &vrings[..255], &[]).is_ok());
}

// ---------------------------------------------------------------------------
// Constants against the Linux UAPI (virtio-bindings)

#[test]
fn virtio_constants_match_linux() {
    use virtio_bindings::virtio_config as cfg;
    use virtio_bindings::virtio_ids as ids;
    assert_eq!(VIRTIO_ID_NET, ids::VIRTIO_ID_NET);
    assert_eq!(VIRTIO_ID_BLOCK, ids::VIRTIO_ID_BLOCK);
    assert_eq!(VIRTIO_ID_CONSOLE, ids::VIRTIO_ID_CONSOLE);
    assert_eq!(VIRTIO_ID_ENTROPY, ids::VIRTIO_ID_RNG);
    assert_eq!(VIRTIO_ID_RPMSG, ids::VIRTIO_ID_RPMSG);
    assert_eq!(VIRTIO_ID_GPU, ids::VIRTIO_ID_GPU);
    assert_eq!(VIRTIO_ID_INPUT, ids::VIRTIO_ID_INPUT);
    assert_eq!(VIRTIO_ID_SOUND, ids::VIRTIO_ID_SOUND);
    let status = |s: u8| u32::from(s);
    assert_eq!(
        status(VIRTIO_STATUS_ACKNOWLEDGE),
        cfg::VIRTIO_CONFIG_S_ACKNOWLEDGE
    );
    assert_eq!(status(VIRTIO_STATUS_DRIVER), cfg::VIRTIO_CONFIG_S_DRIVER);
    assert_eq!(
        status(VIRTIO_STATUS_DRIVER_OK),
        cfg::VIRTIO_CONFIG_S_DRIVER_OK
    );
    assert_eq!(
        status(VIRTIO_STATUS_FEATURES_OK),
        cfg::VIRTIO_CONFIG_S_FEATURES_OK
    );
    assert_eq!(
        status(VIRTIO_STATUS_NEEDS_RESET),
        cfg::VIRTIO_CONFIG_S_NEEDS_RESET
    );
    assert_eq!(status(VIRTIO_STATUS_FAILED), cfg::VIRTIO_CONFIG_S_FAILED);
}
