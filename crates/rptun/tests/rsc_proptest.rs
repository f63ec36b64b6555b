//! Property tests: the resource-table parser never panics, and whatever it
//! accepts lies inside the input.

use proptest::prelude::*;
use rptun::wire::rpmsg_config::{ConfigLayout, RpmsgConfig};
use rptun::wire::rsc::*;

/// Every entry, every recorded live-field offset and every borrowed slice of
/// an accepted table must lie inside the input; iteration yields `num`
/// entries.
fn check_accepted(bytes: &[u8], table: &ResourceTable<'_>) {
    let len = bytes.len();
    assert!(table.extent() <= len);
    assert_eq!(table.entries().count(), table.num_entries());
    for entry in table.entries() {
        assert!(entry.offset() >= HEADER_LEN + 4 * table.num_entries());
        assert!(
            entry.offset() + entry.size() <= len,
            "{entry:?} exceeds {len}"
        );
        assert_eq!(
            bytes[entry.offset()..entry.offset() + 4],
            entry.rsc_type().to_le_bytes()
        );
        match entry {
            Entry::Carveout(c) | Entry::Devmem(c) => {
                assert!(c.da_offset() + 4 <= len);
                assert!(c.pa_offset() + 4 <= len);
                assert!(c.len_offset() + 4 <= len);
            }
            Entry::Trace(t) => assert!(t.da_offset() + 4 <= len),
            Entry::Vdev(v) => {
                assert!(v.notifyid_offset() + 4 <= len);
                assert!(v.gfeatures_offset() + 4 <= len);
                assert!(v.status_offset() < len);
                assert!(v.config_offset() + v.config().len() <= len);
                assert_eq!(
                    &bytes[v.config_offset()..v.config_offset() + v.config().len()],
                    v.config()
                );
                assert_eq!(v.vrings().count(), v.num_vrings());
                for r in v.vrings() {
                    assert!(r.notifyid_offset() + 4 <= len);
                    assert_eq!(bytes[r.da_offset()..r.da_offset() + 4], r.da.to_le_bytes());
                }
                // Config parsing over peer bytes must not panic either.
                let _ = RpmsgConfig::parse(v.config(), ConfigLayout::Current);
                let _ = RpmsgConfig::parse(v.config(), ConfigLayout::Legacy);
            }
            Entry::Vendor(r) | Entry::Unknown(r) => {
                assert_eq!(&bytes[r.offset + 4..r.offset + 4 + r.body.len()], r.body);
            }
        }
    }
}

fn parse_both(bytes: &[u8]) {
    for require_zero_reserved in [true, false] {
        let options = ParseOptions {
            require_zero_reserved,
            ..ParseOptions::default()
        };
        if let Ok(table) = ResourceTable::parse(bytes, &options) {
            check_accepted(bytes, &table);
        }
    }
}

/// A valid table with one of each entry kind.
fn seed_table() -> Vec<u8> {
    let mut b = TableBuilder::new_vec(6).unwrap();
    let vrings = [
        Vring {
            da: ANY,
            align: 8,
            num: 8,
            notifyid: 1,
            reserved: 0,
        },
        Vring {
            da: 0x1000,
            align: 8,
            num: 8,
            notifyid: 2,
            reserved: 0,
        },
    ];
    let vdev = Vdev {
        id: VIRTIO_ID_RPMSG,
        dfeatures: 0xf,
        ..Vdev::default()
    };
    b.add_vdev(&vdev, &vrings, &[0x11; 64]).unwrap();
    b.add_carveout(&Carveout {
        da: 0x1000,
        len: 0x1000,
        name: Name::new("shm").unwrap(),
        ..Carveout::default()
    })
    .unwrap();
    b.add_devmem(&Carveout::default()).unwrap();
    b.add_trace(&Trace::default()).unwrap();
    b.add_vendor(200, &[1, 2, 3, 4]).unwrap();
    b.add_vdev(&Vdev::default(), &vrings[..1], &[]).unwrap();
    b.finish_vec().unwrap()
}

/// A table-shaped input: valid header, small entry count, offsets and
/// entry words drawn from small values so the parser gets past the header.
fn table_shaped() -> impl Strategy<Value = Vec<u8>> {
    (
        0u32..8,
        prop::collection::vec(prop_oneof![0u32..400, (4u32..100).prop_map(|x| x * 4)], 8),
        prop::collection::vec(
            prop_oneof![0u32..6, 126u32..130, Just(512), Just(513), 0u32..300],
            100,
        ),
        prop_oneof![0usize..400, Just(usize::MAX)],
    )
        .prop_map(|(num, offsets, words, len)| {
            let mut v = Vec::new();
            v.extend_from_slice(&1u32.to_le_bytes());
            v.extend_from_slice(&num.to_le_bytes());
            v.extend_from_slice(&[0; 8]);
            for o in &offsets[..num as usize] {
                v.extend_from_slice(&o.to_le_bytes());
            }
            for w in &words {
                v.extend_from_slice(&w.to_le_bytes());
            }
            v.truncate(len);
            v
        })
}

proptest! {
    // Fewer cases under Miri, which runs the parser ~1000x slower.
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 8 } else { 2000 }))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        parse_both(&bytes);
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "building this strategy takes about 5 minutes under Miri whatever the case \
                  count; the parser is safe code, fuzzed by the rsc_parse target"
    )]
    fn table_shaped_bytes_never_panic(bytes in table_shaped()) {
        parse_both(&bytes);
    }

    #[test]
    fn mutated_valid_tables_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = seed_table();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            let n = cut.index(bytes.len() + 1);
            bytes.truncate(n);
        }
        parse_both(&bytes);
    }
}

#[test]
fn seed_table_is_valid() {
    let bytes = seed_table();
    let table = ResourceTable::parse(&bytes, &ParseOptions::default()).unwrap();
    check_accepted(&bytes, &table);
    assert_eq!(table.entries().count(), 6);
}
