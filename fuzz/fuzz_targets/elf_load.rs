//! ELF firmware loader over arbitrary images.
//!
//! Each image is parsed and loaded (by physical and by virtual address) into
//! a small pattern-filled heap region through three translations: an
//! identity `PhysMap` at 0, a `PhysMap` at a high base, and an `AddressMap`
//! whose device addresses differ from the physical ones. The loader's
//! promises are checked against a model computed independently:
//! - a failed load writes nothing;
//! - a successful load writes exactly every non-empty `PT_LOAD` segment, in
//!   program-header order (file bytes, then zeros up to `p_memsz`), and
//!   nothing else;
//! - a load fails only when a segment or the resource table does not map.
#![no_main]

use elf::abi::PT_LOAD;
use elf::endian::LittleEndian;
use elf::ElfBytes;
use libfuzzer_sys::fuzz_target;
use rptun::remoteproc::addr::{AddrEnv, AddrEnvEntry, AddressMap, DaTranslate, PhysMap};
use rptun::remoteproc::elf::{ElfError, ElfImage, SegmentAddr};
use rptun::shm::Region;

const LEN: usize = 0x4000;
const PATTERN: u8 = 0xA5;
const HIGH_BASE: u64 = 0x4000_0000;
/// AddressMap: device addresses `DA..DA+LEN` are physical `PA..PA+LEN`,
/// and the region sits at `PA`.
const DA: u64 = 0x1000_0000;
const PA: u64 = 0x8000_0000;

/// Where `[addr, addr+len)` of a window `[start, start+LEN)` lands, computed
/// without the code under test.
fn window(addr: u64, len: u64, start: u64) -> Option<usize> {
    let rel = addr.checked_sub(start)?;
    let end = rel.checked_add(len)?;
    (rel < LEN as u64 && end <= LEN as u64).then_some(rel as usize)
}

struct Seg {
    index: usize,
    offset: usize,
    filesz: usize,
    paddr: u64,
    vaddr: u64,
    memsz: u64,
}

fn read(r: &Region) -> Vec<u8> {
    let mut v = vec![0; r.len()];
    r.read_bytes(0, &mut v).unwrap();
    v
}

fn check(img: &ElfImage<'_>, data: &[u8], segs: &[Seg], map: &dyn DaTranslate, start: u64) {
    for which in [SegmentAddr::Physical, SegmentAddr::Virtual] {
        let region = Region::new_heap(LEN);
        region.fill(0, LEN, PATTERN).unwrap();
        let res = img.load(&region, map, which);
        let after = read(&region);
        let addr_of = |s: &Seg| match which {
            SegmentAddr::Physical => s.paddr,
            SegmentAddr::Virtual => s.vaddr,
        };
        // The map agrees with the oracle on every segment.
        let mut all_map = true;
        for s in segs {
            let want = window(addr_of(s), s.memsz, start);
            assert_eq!(map.da_to_offset(addr_of(s), s.memsz).ok(), want);
            all_map &= want.is_some();
        }
        match res {
            Err(e) => {
                assert!(
                    after.iter().all(|&b| b == PATTERN),
                    "failed load ({e:?}) wrote to the region"
                );
                assert!(!e.to_string().is_empty());
                match e {
                    ElfError::SegmentNotMapped { index, .. } => {
                        let s = segs
                            .iter()
                            .find(|s| s.index == index)
                            .expect("a loadable index");
                        assert!(
                            window(addr_of(s), s.memsz, start).is_none(),
                            "segment {index} refused though it maps"
                        );
                    }
                    ElfError::ResourceTableNotMapped { .. }
                    | ElfError::ResourceTableOutsideFile { .. }
                    | ElfError::Malformed(_) => {
                        // section-header problems: the resource table must fail too
                        assert!(img.resource_table(Some(map)).is_err());
                    }
                    other => panic!("unexpected load error after a successful parse: {other:?}"),
                }
            }
            Ok(loaded) => {
                assert!(all_map);
                assert_eq!(loaded.segments, segs.len());
                assert_eq!(loaded.entry, img.entry());
                let mut model = vec![PATTERN; LEN];
                for s in segs {
                    let dest = window(addr_of(s), s.memsz, start).unwrap();
                    let memsz = s.memsz as usize;
                    model[dest..dest + s.filesz]
                        .copy_from_slice(&data[s.offset..s.offset + s.filesz]);
                    model[dest + s.filesz..dest + memsz].fill(0);
                }
                assert!(model == after, "loaded region differs from the model");
                assert_eq!(
                    loaded.resource_table,
                    img.resource_table(Some(map)).unwrap()
                );
                if let Some(rt) = loaded.resource_table {
                    assert!(rt.file_offset + rt.size <= data.len());
                    if let Some(off) = rt.region_offset {
                        assert_eq!(Some(off), window(rt.addr, rt.size as u64, start));
                    }
                    let bytes = img.resource_table_bytes().unwrap().unwrap();
                    assert_eq!(bytes, &data[rt.file_offset..rt.file_offset + rt.size]);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let img = match ElfImage::parse(data) {
        Ok(img) => img,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    // Independent list of the loadable segments.
    let file = ElfBytes::<LittleEndian>::minimal_parse(data).expect("parse accepted it");
    let table = file.segments().expect("parse found a loadable segment");
    let segs: Vec<Seg> = table
        .iter()
        .enumerate()
        .filter(|(_, ph)| ph.p_type == PT_LOAD && ph.p_memsz > 0)
        .map(|(index, ph)| {
            assert!(ph.p_filesz <= ph.p_memsz);
            let offset = ph.p_offset as usize;
            let filesz = ph.p_filesz as usize;
            assert!(offset.checked_add(filesz).is_some_and(|e| e <= data.len()));
            Seg {
                index,
                offset,
                filesz,
                paddr: ph.p_paddr,
                vaddr: ph.p_vaddr,
                memsz: ph.p_memsz,
            }
        })
        .collect();
    assert!(!segs.is_empty());
    let _ = (img.is_64bit(), img.machine());

    let low = PhysMap::new(0, LEN).unwrap();
    check(&img, data, &segs, &low, 0);
    let high = PhysMap::new(HIGH_BASE, LEN).unwrap();
    check(&img, data, &segs, &high, HIGH_BASE);
    let env = AddrEnv::<1>::from_entries(&[AddrEnvEntry {
        pa: PA,
        da: DA,
        size: LEN as u64,
    }])
    .unwrap();
    let chained = AddressMap::new(env, PhysMap::new(PA, LEN).unwrap());
    check(&img, data, &segs, &chained, DA);
});
