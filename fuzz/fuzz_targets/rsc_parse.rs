//! Resource-table parser over arbitrary bytes.
//!
//! The input is the table as a peer (or a firmware image) might present it.
//! On success, every entry and every field accessor is exercised and checked
//! against the raw bytes; the table is rebuilt with `TableBuilder` and must
//! parse back to the same entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rptun::wire::rsc::{
    is_vendor_type, Entry, ParseOptions, ResourceTable, TableBuilder, Vring, CARVEOUT_LEN,
    HEADER_LEN, NAME_LEN, RSC_CARVEOUT, RSC_DEVMEM, RSC_TRACE, RSC_VDEV, TRACE_LEN, VDEV_LEN,
    VRING_LEN,
};

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn check_name(name: &rptun::wire::rsc::Name) {
    let s = name.as_bytes();
    assert!(s.len() <= NAME_LEN);
    assert!(!s.contains(&0));
    assert_eq!(&name.raw()[..s.len()], s);
    if s.len() < NAME_LEN {
        assert_eq!(name.raw()[s.len()], 0);
    }
    if let Some(t) = name.as_str() {
        assert_eq!(t.as_bytes(), s);
    }
}

/// Checks one parsed table against its bytes; returns whether it can be
/// rebuilt by `TableBuilder` (no unknown entry types).
fn check_table(t: &ResourceTable<'_>, bytes: &[u8]) -> bool {
    let num = t.num_entries();
    assert_eq!(u32_at(bytes, 4) as usize, num);
    assert_eq!(t.reserved(), [u32_at(bytes, 8), u32_at(bytes, 12)]);
    let array_end = HEADER_LEN + 4 * num;
    assert!(t.extent() >= array_end && t.extent() <= bytes.len());
    assert!(t.entry(num).is_none());
    assert_eq!(t.entries().size_hint(), (num, Some(num)));

    let mut ranges = Vec::with_capacity(num);
    let mut buildable = true;
    let mut count = 0;
    for (i, e) in t.entries().enumerate() {
        count += 1;
        assert_eq!(t.entry(i), Some(e));
        let off = e.offset();
        assert_eq!(off, u32_at(bytes, HEADER_LEN + 4 * i) as usize);
        let end = off + e.size();
        assert!(off >= array_end, "entry {i} inside the header");
        assert!(end <= t.extent(), "entry {i} past the extent");
        assert_eq!(e.rsc_type(), u32_at(bytes, off));
        ranges.push((off, end));
        match e {
            Entry::Carveout(c) | Entry::Devmem(c) => {
                let ty = if matches!(e, Entry::Carveout(_)) {
                    RSC_CARVEOUT
                } else {
                    RSC_DEVMEM
                };
                assert_eq!(e.rsc_type(), ty);
                assert_eq!(e.size(), CARVEOUT_LEN);
                assert_eq!(u32_at(bytes, c.da_offset()), c.da);
                assert_eq!(u32_at(bytes, c.pa_offset()), c.pa);
                assert_eq!(u32_at(bytes, c.len_offset()), c.len);
                for f in [c.da_offset(), c.pa_offset(), c.len_offset()] {
                    assert!(f >= off && f + 4 <= end);
                }
                assert_eq!(&bytes[end - NAME_LEN..end], c.name.raw());
                check_name(&c.name);
            }
            Entry::Trace(tr) => {
                assert_eq!(e.rsc_type(), RSC_TRACE);
                assert_eq!(e.size(), TRACE_LEN);
                assert!(tr.da_offset() >= off && tr.da_offset() + 4 <= end);
                assert_eq!(u32_at(bytes, tr.da_offset()), tr.da);
                assert_eq!(&bytes[end - NAME_LEN..end], tr.name.raw());
                check_name(&tr.name);
            }
            Entry::Vdev(v) => {
                assert_eq!(e.rsc_type(), RSC_VDEV);
                let nv = v.num_vrings();
                assert_eq!(nv, usize::from(bytes[off + 25]));
                assert_eq!(u32_at(bytes, off + 20) as usize, v.config().len());
                assert_eq!(v.size(), VDEV_LEN + nv * VRING_LEN + v.config().len());
                assert_eq!(u32_at(bytes, v.notifyid_offset()), v.notifyid);
                assert_eq!(u32_at(bytes, v.dfeatures_offset()), v.dfeatures);
                assert_eq!(u32_at(bytes, v.gfeatures_offset()), v.gfeatures);
                assert_eq!(bytes[v.status_offset()], v.status);
                let r = v.reserved_offset();
                assert_eq!([bytes[r], bytes[r + 1]], v.reserved);
                for f in [
                    v.notifyid_offset(),
                    v.dfeatures_offset(),
                    v.gfeatures_offset(),
                    v.reserved_offset(),
                ] {
                    assert!(f >= off && f + 2 <= off + VDEV_LEN);
                }
                assert!(v.status_offset() >= off && v.status_offset() < off + VDEV_LEN);
                let co = v.config_offset();
                assert_eq!(co + v.config().len(), end);
                assert_eq!(&bytes[co..end], v.config());
                assert!(v.vring(nv).is_none());
                assert_eq!(v.vrings().count(), nv);
                for (k, ring) in v.vrings().enumerate() {
                    assert_eq!(v.vring(k), Some(ring));
                    assert_eq!(ring.offset, off + VDEV_LEN + k * VRING_LEN);
                    assert_eq!(u32_at(bytes, ring.da_offset()), ring.da);
                    assert_eq!(u32_at(bytes, ring.align_offset()), ring.align);
                    assert_eq!(u32_at(bytes, ring.num_offset()), ring.num);
                    assert_eq!(u32_at(bytes, ring.notifyid_offset()), ring.notifyid);
                    assert_eq!(u32_at(bytes, ring.offset + 16), ring.reserved);
                    for f in [
                        ring.da_offset(),
                        ring.align_offset(),
                        ring.num_offset(),
                        ring.notifyid_offset(),
                    ] {
                        assert!(f >= ring.offset && f + 4 <= ring.offset + VRING_LEN);
                    }
                }
            }
            Entry::Vendor(raw) | Entry::Unknown(raw) => {
                assert_eq!(is_vendor_type(raw.rsc_type), matches!(e, Entry::Vendor(_)));
                assert!(raw.rsc_type > RSC_VDEV);
                assert_eq!(raw.body, &bytes[off + 4..end]);
                if matches!(e, Entry::Unknown(_)) {
                    buildable = false;
                }
            }
        }
    }
    assert_eq!(count, num);
    // The parser promises that no two entries share bytes.
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "entries overlap: {:?} and {:?}",
            w[0],
            w[1]
        );
    }
    // Filtered views agree with the full walk.
    let vdevs = t.entries().filter(|e| matches!(e, Entry::Vdev(_))).count();
    assert_eq!(t.vdevs().count(), vdevs);
    let carveouts = t
        .entries()
        .filter(|e| matches!(e, Entry::Carveout(_)))
        .count();
    assert_eq!(t.carveouts().count(), carveouts);
    let _ = format!("{t:?}");
    buildable
}

/// Rebuilds the table packed, in offset-array order.
fn rebuild(t: &ResourceTable<'_>) -> Vec<u8> {
    let mut b = TableBuilder::new_vec(t.num_entries() as u32).unwrap();
    for e in t.entries() {
        match e {
            Entry::Carveout(c) => b.add_carveout(&c).unwrap(),
            Entry::Devmem(c) => b.add_devmem(&c).unwrap(),
            Entry::Trace(tr) => b.add_trace(&tr).unwrap(),
            Entry::Vdev(v) => {
                let rings: Vec<Vring> = v.vrings().map(|r| r.value).collect();
                b.add_vdev(&v.value, &rings, v.config()).unwrap()
            }
            Entry::Vendor(raw) => b.add_vendor(raw.rsc_type, raw.body).unwrap(),
            Entry::Unknown(_) => unreachable!(),
        };
    }
    b.finish_vec().unwrap()
}

fuzz_target!(|bytes: &[u8]| {
    let strict = ParseOptions::default();
    let relaxed = ParseOptions {
        require_zero_reserved: false,
        ..ParseOptions::default()
    };
    let a = ResourceTable::parse(bytes, &strict);
    let b = ResourceTable::parse(bytes, &relaxed);
    match (&a, &b) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.num_entries(), b.num_entries());
            assert_eq!(a.extent(), b.extent());
        }
        (Err(rptun::wire::rsc::RscError::ReservedNotZero { .. }), _) => {}
        (Err(ea), Err(eb)) => assert_eq!(ea, eb),
        (Err(e), Ok(_)) => panic!("strict parse failed with {e:?} but relaxed succeeded"),
        (Ok(_), Err(e)) => panic!("relaxed parse failed with {e:?} but strict succeeded"),
    }
    if let Err(e) = &b {
        // Every error has a message.
        assert!(!e.to_string().is_empty());
        return;
    }
    let t = b.unwrap();
    // The entry-count limit is exact.
    let n = t.num_entries() as u32;
    let tight = ParseOptions {
        require_zero_reserved: false,
        max_entries: n,
    };
    assert!(ResourceTable::parse(bytes, &tight).is_ok());
    if n > 0 {
        let below = ParseOptions {
            require_zero_reserved: false,
            max_entries: n - 1,
        };
        assert!(matches!(
            ResourceTable::parse(bytes, &below),
            Err(rptun::wire::rsc::RscError::TooManyEntries { .. })
        ));
    }
    // Bytes past the extent are not part of the table: cutting them off
    // changes nothing (a trailing vendor entry reaches the end anyway).
    let cut =
        ResourceTable::parse(&bytes[..t.extent()], &relaxed).expect("table cut at its extent");
    assert!(t.entries().eq(cut.entries()));
    assert_eq!(cut.extent(), t.extent());
    if check_table(&t, bytes) {
        let built = rebuild(&t);
        let t2 = ResourceTable::parse(&built, &strict).expect("rebuilt table must parse");
        assert_eq!(t2.num_entries(), t.num_entries());
        for (x, y) in t.entries().zip(t2.entries()) {
            match (x, y) {
                (Entry::Carveout(p), Entry::Carveout(q)) | (Entry::Devmem(p), Entry::Devmem(q)) => {
                    assert_eq!(p.value, q.value)
                }
                (Entry::Trace(p), Entry::Trace(q)) => assert_eq!(p.value, q.value),
                (Entry::Vdev(p), Entry::Vdev(q)) => {
                    assert_eq!(p.value, q.value);
                    assert_eq!(p.config(), q.config());
                    assert!(p.vrings().map(|r| r.value).eq(q.vrings().map(|r| r.value)));
                }
                (Entry::Vendor(p), Entry::Vendor(q)) => {
                    assert_eq!((p.rsc_type, p.body), (q.rsc_type, q.body))
                }
                (x, y) => panic!("rebuilt entry differs: {x:?} vs {y:?}"),
            }
        }
        check_table(&t2, &built);
    }
});
