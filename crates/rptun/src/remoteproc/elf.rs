//! Loading an ELF firmware image into shared memory.
//!
//! The master of a remote core may boot it from an ELF file: every `PT_LOAD`
//! segment is copied to the memory its address names (`p_paddr` by default,
//! as Linux and OpenAMP do; `p_vaddr` on request), translated through an
//! [address map](crate::remoteproc::addr::DaTranslate) to an offset in a
//! [`Region`]; the part of a segment beyond its file bytes (`.bss`) is
//! zeroed. The image's `.resource_table` section is the remote's resource
//! table: [`ElfImage::resource_table`] locates it both in the file and, once
//! loaded, in the region.
//!
//! The image is untrusted input: 32- and 64-bit little-endian images are
//! accepted (machine and OS ABI are not checked), and every offset, size and
//! address is validated with overflow-checked arithmetic before a single
//! byte is written, so a bad image leaves the region untouched and yields an
//! [`ElfError`], never a panic. Segments whose memory overlaps are written in
//! program-header order (as Linux does).
#![forbid(unsafe_code)]

use ::elf::abi::{ET_DYN, ET_EXEC, PT_LOAD, SHF_ALLOC, SHT_NOBITS};
use ::elf::endian::LittleEndian;
use ::elf::segment::ProgramHeader;
use ::elf::{ElfBytes, ParseError};

use crate::remoteproc::addr::{AddrError, DaTranslate};
use crate::shm::{Region, ShmError};

/// Name of the section holding the resource table.
pub const RESOURCE_TABLE_SECTION: &str = ".resource_table";

/// Errors of the ELF loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// The headers could not be parsed.
    #[error("malformed ELF image: {0}; rebuild the firmware or check that the file is complete")]
    Malformed(&'static str),
    /// The image is big-endian.
    #[error("ELF image is big-endian; only little-endian firmware is supported")]
    NotLittleEndian,
    /// The image is not an executable (e.g. a relocatable object).
    #[error("ELF type {e_type} is not an executable (ET_EXEC/ET_DYN); link the firmware fully")]
    NotExecutable {
        /// The `e_type` found.
        e_type: u16,
    },
    /// The image has no non-empty `PT_LOAD` segment.
    #[error("ELF image has no loadable segment; is it really a firmware image?")]
    NoLoadableSegment,
    /// A segment has more file bytes than memory bytes.
    #[error(
        "ELF segment {index}: file size {filesz:#x} exceeds memory size {memsz:#x}; the program \
         header is corrupt"
    )]
    FileSizeExceedsMemSize {
        /// Program header index.
        index: usize,
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// A segment's file bytes lie (partly) outside the file.
    #[error(
        "ELF segment {index}: {filesz:#x} bytes at file offset {offset:#x} lie outside the \
         image; the file is truncated or corrupt"
    )]
    SegmentOutsideFile {
        /// Program header index.
        index: usize,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        filesz: u64,
    },
    /// A segment's memory is not (wholly) inside the shared region.
    #[error(
        "ELF segment {index}: {memsz:#x} bytes at address {addr:#x} are not inside the shared \
         memory ({cause}); link the firmware for this memory map"
    )]
    SegmentNotMapped {
        /// Program header index.
        index: usize,
        /// Load address (`p_paddr` or `p_vaddr`).
        addr: u64,
        /// `p_memsz`.
        memsz: u64,
        /// Why the translation failed.
        cause: AddrError,
    },
    /// The resource-table section's bytes lie outside the file (or it has
    /// no file bytes).
    #[error(
        "the .resource_table section ({size:#x} bytes at file offset {offset:#x}) lies outside \
         the image or has no contents; the file is truncated or corrupt"
    )]
    ResourceTableOutsideFile {
        /// `sh_offset`.
        offset: u64,
        /// `sh_size`.
        size: u64,
    },
    /// The resource-table section is loaded to memory outside the region.
    #[error(
        "the .resource_table section ({size:#x} bytes at {addr:#x}) is not inside the shared \
         memory ({cause}); link it into a loaded segment"
    )]
    ResourceTableNotMapped {
        /// `sh_addr`.
        addr: u64,
        /// `sh_size`.
        size: u64,
        /// Why the translation failed.
        cause: AddrError,
    },
    /// Writing to the region failed (the address map points past the
    /// region's end).
    #[error("loading the ELF image into shared memory failed: {0}")]
    Shm(#[from] ShmError),
}

fn parse_error(e: ParseError) -> ElfError {
    #[allow(unreachable_patterns)]
    let what = match e {
        ParseError::UnsupportedElfEndianness(_) => return ElfError::NotLittleEndian,
        ParseError::BadMagic(_) => "not an ELF file (bad magic)",
        ParseError::UnsupportedElfClass(_) => "unknown ELF class (neither 32- nor 64-bit)",
        ParseError::UnsupportedVersion(_) => "unsupported ELF version",
        ParseError::BadOffset(_) => "a header offset is out of range",
        ParseError::StringTableMissingNul(_) => "the section name table is not NUL-terminated",
        ParseError::BadEntsize(_) => "wrong program or section header entry size",
        ParseError::UnexpectedSectionType(_) => "a section has an unexpected type",
        ParseError::UnexpectedSegmentType(_) => "a segment has an unexpected type",
        ParseError::UnexpectedAlignment(_) => "a section has an unexpected alignment",
        ParseError::SliceReadError(_) | ParseError::TryFromSliceError(_) => {
            "a header or table lies past the end of the file"
        }
        ParseError::IntegerOverflow => "a header field overflows",
        ParseError::Utf8Error(_) => "a section name is not UTF-8",
        ParseError::TryFromIntError(_) => "a header field does not fit this machine's address size",
        _ => "unparsable headers",
    };
    ElfError::Malformed(what)
}

/// Which program-header address names a segment's load address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SegmentAddr {
    /// `p_paddr` (Linux remoteproc and OpenAMP).
    #[default]
    Physical,
    /// `p_vaddr`.
    Virtual,
}

/// Where the resource table of an image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceTableInfo {
    /// Load address of the section (`sh_addr`).
    pub addr: u64,
    /// Size in bytes.
    pub size: usize,
    /// Offset of its bytes in the image file.
    pub file_offset: usize,
    /// Offset in the region where it lives after loading; `None` when the
    /// section is not allocated (not part of the loaded memory).
    pub region_offset: Option<usize>,
}

/// What [`ElfImage::load`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedImage {
    /// The entry point (`e_entry`, a device address).
    pub entry: u64,
    /// Number of segments written.
    pub segments: usize,
    /// The resource table, if the image has one.
    pub resource_table: Option<ResourceTableInfo>,
}

/// One validated loadable segment.
#[derive(Debug, Clone, Copy)]
struct LoadSegment {
    index: usize,
    file_offset: usize,
    filesz: usize,
    addr: u64,
    memsz: u64,
}

/// A parsed, validated ELF image borrowed from its bytes.
#[derive(Debug)]
pub struct ElfImage<'a> {
    data: &'a [u8],
    elf: ElfBytes<'a, LittleEndian>,
}

impl<'a> ElfImage<'a> {
    /// Parses and validates `data`: a 32- or 64-bit little-endian executable
    /// with at least one non-empty `PT_LOAD` segment, each of whose file
    /// bytes lie inside `data` and number no more than its memory bytes.
    pub fn parse(data: &'a [u8]) -> Result<Self, ElfError> {
        let elf = ElfBytes::<LittleEndian>::minimal_parse(data).map_err(parse_error)?;
        let e_type = elf.ehdr.e_type;
        if e_type != ET_EXEC && e_type != ET_DYN {
            return Err(ElfError::NotExecutable { e_type });
        }
        let image = ElfImage { data, elf };
        let mut loadable = 0usize;
        image.for_each_load(SegmentAddr::Physical, |_| {
            loadable += 1;
            Ok(())
        })?;
        if loadable == 0 {
            return Err(ElfError::NoLoadableSegment);
        }
        Ok(image)
    }

    /// The entry point (`e_entry`).
    pub fn entry(&self) -> u64 {
        self.elf.ehdr.e_entry
    }

    /// True for a 64-bit image.
    pub fn is_64bit(&self) -> bool {
        self.elf.ehdr.class == ::elf::file::Class::ELF64
    }

    /// The machine (`e_machine`), for callers that want to check it.
    pub fn machine(&self) -> u16 {
        self.elf.ehdr.e_machine
    }

    /// Calls `f` with every non-empty `PT_LOAD` segment, validated against
    /// the file. The number of calls is bounded by the program-header table,
    /// which lies inside the file.
    fn for_each_load(
        &self,
        which: SegmentAddr,
        mut f: impl FnMut(LoadSegment) -> Result<(), ElfError>,
    ) -> Result<(), ElfError> {
        let Some(table) = self.elf.segments() else {
            return Ok(());
        };
        for (index, ph) in table.iter().enumerate() {
            if ph.p_type != PT_LOAD || ph.p_memsz == 0 {
                continue;
            }
            f(self.check_segment(index, &ph, which)?)?;
        }
        Ok(())
    }

    fn check_segment(
        &self,
        index: usize,
        ph: &ProgramHeader,
        which: SegmentAddr,
    ) -> Result<LoadSegment, ElfError> {
        if ph.p_filesz > ph.p_memsz {
            return Err(ElfError::FileSizeExceedsMemSize {
                index,
                filesz: ph.p_filesz,
                memsz: ph.p_memsz,
            });
        }
        let outside = ElfError::SegmentOutsideFile {
            index,
            offset: ph.p_offset,
            filesz: ph.p_filesz,
        };
        let file_offset = usize::try_from(ph.p_offset).map_err(|_| outside)?;
        let filesz = usize::try_from(ph.p_filesz).map_err(|_| outside)?;
        match file_offset.checked_add(filesz) {
            Some(end) if end <= self.data.len() => {}
            _ => return Err(outside),
        }
        let addr = match which {
            SegmentAddr::Physical => ph.p_paddr,
            SegmentAddr::Virtual => ph.p_vaddr,
        };
        Ok(LoadSegment {
            index,
            file_offset,
            filesz,
            addr,
            memsz: ph.p_memsz,
        })
    }

    /// Locates the `.resource_table` section, if any; `map` (when given)
    /// turns its load address into a region offset.
    pub fn resource_table(
        &self,
        map: Option<&dyn DaTranslate>,
    ) -> Result<Option<ResourceTableInfo>, ElfError> {
        let Some(sh) = self
            .elf
            .section_header_by_name(RESOURCE_TABLE_SECTION)
            .map_err(parse_error)?
        else {
            return Ok(None);
        };
        let outside = ElfError::ResourceTableOutsideFile {
            offset: sh.sh_offset,
            size: sh.sh_size,
        };
        if sh.sh_type == SHT_NOBITS {
            return Err(outside);
        }
        let file_offset = usize::try_from(sh.sh_offset).map_err(|_| outside)?;
        let size = usize::try_from(sh.sh_size).map_err(|_| outside)?;
        match file_offset.checked_add(size) {
            Some(end) if end <= self.data.len() => {}
            _ => return Err(outside),
        }
        let region_offset = match map {
            Some(map) if sh.sh_flags & u64::from(SHF_ALLOC) != 0 => {
                Some(map.da_to_offset(sh.sh_addr, sh.sh_size).map_err(|cause| {
                    ElfError::ResourceTableNotMapped {
                        addr: sh.sh_addr,
                        size: sh.sh_size,
                        cause,
                    }
                })?)
            }
            _ => None,
        };
        Ok(Some(ResourceTableInfo {
            addr: sh.sh_addr,
            size,
            file_offset,
            region_offset,
        }))
    }

    /// The bytes of the `.resource_table` section in the file, if any.
    pub fn resource_table_bytes(&self) -> Result<Option<&'a [u8]>, ElfError> {
        Ok(self.resource_table(None)?.map(|t| {
            // the range was checked against the file by `resource_table`
            &self.data[t.file_offset..t.file_offset + t.size]
        }))
    }

    /// Loads every `PT_LOAD` segment into `region` through `map`: copies its
    /// file bytes and zeroes the rest of its memory. Validates all segments
    /// (file range, translation, region bounds) before writing anything.
    /// Also locates the resource table.
    pub fn load(
        &self,
        region: &Region,
        map: &dyn DaTranslate,
        which: SegmentAddr,
    ) -> Result<LoadedImage, ElfError> {
        let place = |seg: &LoadSegment| -> Result<usize, ElfError> {
            let not_mapped = |cause| ElfError::SegmentNotMapped {
                index: seg.index,
                addr: seg.addr,
                memsz: seg.memsz,
                cause,
            };
            let dest = map.da_to_offset(seg.addr, seg.memsz).map_err(not_mapped)?;
            let memsz = usize::try_from(seg.memsz).map_err(|_| {
                not_mapped(AddrError::Unmapped {
                    addr: seg.addr,
                    len: seg.memsz,
                })
            })?;
            region.check(dest, memsz)?;
            Ok(dest)
        };
        // pass 1: validate everything
        let resource_table = self.resource_table(Some(map))?;
        self.for_each_load(which, |seg| place(&seg).map(|_| ()))?;
        // pass 2: write
        let mut segments = 0;
        self.for_each_load(which, |seg| {
            let dest = place(&seg)?;
            let src = &self.data[seg.file_offset..seg.file_offset + seg.filesz];
            region.write_bytes(dest, src)?;
            // memsz fits usize and dest + memsz is inside the region (pass 1)
            let memsz = seg.memsz as usize;
            region.fill(dest + seg.filesz, memsz - seg.filesz, 0)?;
            segments += 1;
            Ok(())
        })?;
        Ok(LoadedImage {
            entry: self.entry(),
            segments,
            resource_table,
        })
    }
}

/// Parses `image` and loads it into `region` through `map` (see
/// [`ElfImage::load`]).
pub fn load(
    image: &[u8],
    region: &Region,
    map: &dyn DaTranslate,
    which: SegmentAddr,
) -> Result<LoadedImage, ElfError> {
    ElfImage::parse(image)?.load(region, map, which)
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use crate::remoteproc::addr::{AddrEnv, AddrEnvEntry, AddressMap, PhysMap};
    use proptest::prelude::*;

    // ---- a tiny ELF builder ------------------------------------------------

    #[derive(Clone)]
    struct Seg {
        p_type: u32,
        paddr: u64,
        vaddr: u64,
        data: Vec<u8>,
        memsz: u64,
    }

    fn load_seg(addr: u64, data: &[u8], memsz: u64) -> Seg {
        Seg {
            p_type: PT_LOAD,
            paddr: addr,
            vaddr: addr,
            data: data.to_vec(),
            memsz,
        }
    }

    #[derive(Clone)]
    struct Sect {
        name: &'static str,
        sh_type: u32,
        flags: u64,
        addr: u64,
        data: Vec<u8>,
    }

    /// File offsets of interesting headers, for targeted corruption.
    struct Layout {
        phoff: usize,
        phentsize: usize,
        shoff: usize,
        shentsize: usize,
    }

    struct W {
        b: Vec<u8>,
        is64: bool,
    }

    impl W {
        fn u16(&mut self, v: u16) {
            self.b.extend_from_slice(&v.to_le_bytes());
        }
        fn u32(&mut self, v: u32) {
            self.b.extend_from_slice(&v.to_le_bytes());
        }
        fn u64(&mut self, v: u64) {
            self.b.extend_from_slice(&v.to_le_bytes());
        }
        /// An address/offset/size field: 4 bytes in ELF32, 8 in ELF64.
        fn word(&mut self, v: u64) {
            if self.is64 {
                self.u64(v)
            } else {
                self.u32(v as u32)
            }
        }
    }

    fn build(is64: bool, entry: u64, segs: &[Seg], sects: &[Sect]) -> (Vec<u8>, Layout) {
        let ehsize = if is64 { 64 } else { 52 };
        let phentsize = if is64 { 56 } else { 32 };
        let shentsize = if is64 { 64 } else { 40 };
        let phoff = ehsize;
        let mut off = phoff + phentsize * segs.len();
        let mut seg_offs = Vec::new();
        for s in segs {
            seg_offs.push(off);
            off += s.data.len();
        }
        let mut sect_offs = Vec::new();
        for s in sects {
            sect_offs.push(off);
            off += s.data.len();
        }
        // .shstrtab: "\0" + names + ".shstrtab\0"
        let mut strtab = vec![0u8];
        let mut name_offs = Vec::new();
        for s in sects {
            name_offs.push(strtab.len() as u32);
            strtab.extend_from_slice(s.name.as_bytes());
            strtab.push(0);
        }
        let shstrtab_name = strtab.len() as u32;
        strtab.extend_from_slice(b".shstrtab\0");
        let strtab_off = off;
        off += strtab.len();
        let shoff = off;
        let shnum = sects.len() + 2; // null + sections + .shstrtab

        let mut w = W {
            b: Vec::new(),
            is64,
        };
        w.b.extend_from_slice(&[0x7f, b'E', b'L', b'F', if is64 { 2 } else { 1 }, 1, 1]);
        w.b.resize(16, 0);
        w.u16(ET_EXEC);
        w.u16(40); // EM_ARM; not checked
        w.u32(1);
        w.word(entry);
        w.word(phoff as u64);
        w.word(shoff as u64);
        w.u32(0);
        w.u16(ehsize as u16);
        w.u16(phentsize as u16);
        w.u16(segs.len() as u16);
        w.u16(shentsize as u16);
        w.u16(shnum as u16);
        w.u16((shnum - 1) as u16);
        assert_eq!(w.b.len(), ehsize);
        for (s, &o) in segs.iter().zip(&seg_offs) {
            w.u32(s.p_type);
            if is64 {
                w.u32(7); // flags
            }
            w.word(o as u64);
            w.word(s.vaddr);
            w.word(s.paddr);
            w.word(s.data.len() as u64);
            w.word(s.memsz);
            if !is64 {
                w.u32(7);
            }
            w.word(4);
        }
        for s in segs {
            w.b.extend_from_slice(&s.data);
        }
        for s in sects {
            w.b.extend_from_slice(&s.data);
        }
        w.b.extend_from_slice(&strtab);
        assert_eq!(w.b.len(), shoff);
        let shdr = |w: &mut W, name: u32, ty: u32, flags: u64, addr: u64, o: usize, size: usize| {
            w.u32(name);
            w.u32(ty);
            w.word(flags);
            w.word(addr);
            w.word(o as u64);
            w.word(size as u64);
            w.u32(0);
            w.u32(0);
            w.word(1);
            w.word(0);
        };
        shdr(&mut w, 0, 0, 0, 0, 0, 0);
        for ((s, &o), &n) in sects.iter().zip(&sect_offs).zip(&name_offs) {
            shdr(&mut w, n, s.sh_type, s.flags, s.addr, o, s.data.len());
        }
        shdr(&mut w, shstrtab_name, 3, 0, 0, strtab_off, strtab.len());
        (
            w.b,
            Layout {
                phoff,
                phentsize,
                shoff,
                shentsize,
            },
        )
    }

    // ---- fixtures ----------------------------------------------------------

    const DA: u64 = 0x1000_0000; // where the firmware is linked
    const PA: u64 = 0x8000_0000; // where that memory is in the shared space
    const MEM: usize = 0x1000;

    /// da 0x1000_0000.. → pa 0x8000_0000.. → region offset 0..
    fn map() -> AddressMap<1> {
        let env = AddrEnv::from_entries(&[AddrEnvEntry {
            pa: PA,
            da: DA,
            size: MEM as u64,
        }])
        .unwrap();
        AddressMap::new(env, PhysMap::new(PA, MEM).unwrap())
    }

    fn region() -> Region {
        let r = Region::new_heap(MEM);
        r.fill(0, MEM, 0xaa).unwrap();
        r
    }

    fn rsc_bytes() -> Vec<u8> {
        // a header of an empty resource table: ver 1, num 0, reserved 0, 0
        vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    }

    fn firmware(is64: bool) -> (Vec<u8>, Layout) {
        let text: Vec<u8> = (0u8..64).collect();
        build(
            is64,
            DA + 0x10,
            &[
                load_seg(DA, &text, 64),
                // .data (8 bytes) + .bss (24 bytes), holding the resource table
                load_seg(DA + 0x200, &[0x11; 8], 32),
                Seg {
                    p_type: 4, // PT_NOTE: not loaded
                    paddr: 0,
                    vaddr: 0,
                    data: vec![0x55; 4],
                    memsz: 4,
                },
            ],
            &[
                Sect {
                    name: ".text",
                    sh_type: 1,
                    flags: 6,
                    addr: DA,
                    data: vec![],
                },
                Sect {
                    name: RESOURCE_TABLE_SECTION,
                    sh_type: 1,
                    flags: u64::from(SHF_ALLOC),
                    addr: DA + 0x300,
                    data: rsc_bytes(),
                },
            ],
        )
    }

    fn read(r: &Region, off: usize, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        r.read_bytes(off, &mut v).unwrap();
        v
    }

    // ---- loading -----------------------------------------------------------

    fn check_loaded(is64: bool) {
        let (img, _) = firmware(is64);
        let r = region();
        let parsed = ElfImage::parse(&img).unwrap();
        assert_eq!(parsed.is_64bit(), is64);
        assert_eq!(parsed.machine(), 40);
        let loaded = parsed.load(&r, &map(), SegmentAddr::Physical).unwrap();
        assert_eq!(loaded.entry, DA + 0x10);
        assert_eq!(loaded.segments, 2);
        assert_eq!(read(&r, 0, 64), (0u8..64).collect::<Vec<_>>());
        assert_eq!(read(&r, 64, 4), vec![0xaa; 4], "wrote past the segment");
        assert_eq!(read(&r, 0x200, 8), vec![0x11; 8]);
        assert_eq!(read(&r, 0x208, 24), vec![0; 24], ".bss not zeroed");
        assert_eq!(read(&r, 0x220, 4), vec![0xaa; 4]);
        let rt = loaded.resource_table.unwrap();
        assert_eq!(rt.addr, DA + 0x300);
        assert_eq!(rt.size, 16);
        assert_eq!(rt.region_offset, Some(0x300));
        assert_eq!(
            &img[rt.file_offset..rt.file_offset + rt.size],
            &rsc_bytes()[..]
        );
        assert_eq!(
            parsed.resource_table_bytes().unwrap(),
            Some(&rsc_bytes()[..])
        );
    }

    #[test]
    fn loads_an_elf32_image() {
        check_loaded(false);
    }

    #[test]
    fn loads_an_elf64_image() {
        check_loaded(true);
    }

    #[test]
    fn virtual_addresses_on_request() {
        let mut seg = load_seg(0, &[1, 2, 3, 4], 4);
        seg.paddr = 0xdead_0000; // not mapped
        seg.vaddr = DA + 0x40;
        let (img, _) = build(false, 0, &[seg], &[]);
        let r = region();
        assert!(matches!(
            load(&img, &r, &map(), SegmentAddr::Physical),
            Err(ElfError::SegmentNotMapped {
                index: 0,
                addr: 0xdead_0000,
                ..
            })
        ));
        let loaded = load(&img, &r, &map(), SegmentAddr::Virtual).unwrap();
        assert_eq!(loaded.resource_table, None);
        assert_eq!(read(&r, 0x40, 4), vec![1, 2, 3, 4]);
    }

    #[test]
    fn an_unallocated_resource_table_has_no_region_offset() {
        let (img, _) = build(
            true,
            0,
            &[load_seg(DA, &[1], 1)],
            &[Sect {
                name: RESOURCE_TABLE_SECTION,
                sh_type: 1,
                flags: 0,
                addr: 0,
                data: rsc_bytes(),
            }],
        );
        let loaded = load(&img, &region(), &map(), SegmentAddr::Physical).unwrap();
        let rt = loaded.resource_table.unwrap();
        assert_eq!((rt.size, rt.region_offset), (16, None));
    }

    // ---- malformed images --------------------------------------------------

    /// Patches a field of the first program header of an ELF32 image.
    fn patch_ph32(img: &mut [u8], l: &Layout, index: usize, field: usize, v: u32) {
        let o = l.phoff + index * l.phentsize + field * 4;
        img[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn load32(img: &[u8]) -> (Result<LoadedImage, ElfError>, Region) {
        let r = region();
        (load(img, &r, &map(), SegmentAddr::Physical), r)
    }

    #[test]
    fn truncated_images_are_rejected() {
        let (img, l) = firmware(false);
        for cut in [0, 3, 10, 51, l.phoff + 10, l.shoff + 5, img.len() - 1] {
            let (res, _) = load32(&img[..cut]);
            assert!(res.is_err(), "image cut at {cut} was accepted");
        }
        assert_eq!(
            load32(&img[..40]).0,
            Err(ElfError::Malformed(
                "a header or table lies past the end of the file"
            ))
        );
    }

    #[test]
    fn segment_outside_the_file() {
        let (mut img, l) = firmware(false);
        // p_filesz (field 4) and p_memsz (5) of segment 1 grown past the file
        patch_ph32(&mut img, &l, 1, 4, 0x10_0000);
        patch_ph32(&mut img, &l, 1, 5, 0x10_0000);
        assert!(matches!(
            load32(&img).0,
            Err(ElfError::SegmentOutsideFile { index: 1, .. })
        ));
        // p_offset + p_filesz wraps
        let (mut img, l) = firmware(true);
        let o = l.phoff + 8; // p_offset of segment 0 in ELF64
        img[o..o + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            load32(&img).0,
            Err(ElfError::SegmentOutsideFile {
                index: 0,
                offset: u64::MAX,
                ..
            })
        ));
    }

    #[test]
    fn file_size_larger_than_memory_size() {
        let (mut img, l) = firmware(false);
        patch_ph32(&mut img, &l, 0, 5, 8); // memsz 8 < filesz 64
        assert_eq!(
            load32(&img).0,
            Err(ElfError::FileSizeExceedsMemSize {
                index: 0,
                filesz: 64,
                memsz: 8
            })
        );
    }

    #[test]
    fn segments_outside_memory_leave_the_region_untouched() {
        let (mut img, l) = firmware(false);
        // segment 1 at the end of the window, its .bss running past it
        patch_ph32(&mut img, &l, 1, 3, (DA + MEM as u64 - 16) as u32);
        let (res, r) = load32(&img);
        assert!(matches!(
            res,
            Err(ElfError::SegmentNotMapped {
                index: 1,
                memsz: 32,
                cause: AddrError::Straddles { .. },
                ..
            })
        ));
        // segment 0 was valid but nothing was written
        assert_eq!(read(&r, 0, MEM), vec![0xaa; MEM]);
        // an address below the window
        patch_ph32(&mut img, &l, 1, 3, 0x100);
        assert!(matches!(
            load32(&img).0,
            Err(ElfError::SegmentNotMapped {
                cause: AddrError::Unmapped { .. },
                ..
            })
        ));
    }

    #[test]
    fn address_plus_size_wrapping_is_rejected() {
        let (mut img, l) = firmware(true);
        let seg1 = l.phoff + l.phentsize;
        // p_paddr (at 24) = u64::MAX - 7 and p_memsz (at 40) = 32
        img[seg1 + 24..seg1 + 32].copy_from_slice(&(u64::MAX - 7).to_le_bytes());
        assert!(matches!(
            load32(&img).0,
            Err(ElfError::SegmentNotMapped {
                cause: AddrError::Wraps { .. },
                ..
            })
        ));
        // a gigantic memsz
        let (mut img, l) = firmware(true);
        let seg1 = l.phoff + l.phentsize;
        img[seg1 + 40..seg1 + 48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            load32(&img).0,
            Err(ElfError::SegmentNotMapped { index: 1, .. })
        ));
    }

    #[test]
    fn a_map_larger_than_the_region_is_caught() {
        let (img, _) = firmware(false);
        let small = Region::new_heap(0x100);
        assert!(matches!(
            load(&img, &small, &map(), SegmentAddr::Physical),
            Err(ElfError::Shm(ShmError::OutOfBounds { .. }))
        ));
    }

    #[test]
    fn resource_table_outside_file_or_memory() {
        let (img, l) = firmware(false);
        // section 2 is .resource_table; sh_offset is field 4, sh_addr field 3
        let sh = l.shoff + 2 * l.shentsize;
        let mut bad = img.clone();
        bad[sh + 16..sh + 20].copy_from_slice(&(img.len() as u32 - 8).to_le_bytes());
        assert!(matches!(
            load32(&bad).0,
            Err(ElfError::ResourceTableOutsideFile { size: 16, .. })
        ));
        let mut bad = img.clone();
        bad[sh + 12..sh + 16].copy_from_slice(&0x4000_0000u32.to_le_bytes());
        assert!(matches!(
            load32(&bad).0,
            Err(ElfError::ResourceTableNotMapped {
                addr: 0x4000_0000,
                ..
            })
        ));
        // NOBITS
        let mut bad = img;
        bad[sh + 4..sh + 8].copy_from_slice(&SHT_NOBITS.to_le_bytes());
        assert!(matches!(
            load32(&bad).0,
            Err(ElfError::ResourceTableOutsideFile { .. })
        ));
    }

    #[test]
    fn header_level_rejections() {
        let (img, _) = firmware(false);
        let mut be = img.clone();
        be[5] = 2;
        assert_eq!(load32(&be).0, Err(ElfError::NotLittleEndian));
        let mut magic = img.clone();
        magic[1] = b'X';
        assert_eq!(
            load32(&magic).0,
            Err(ElfError::Malformed("not an ELF file (bad magic)"))
        );
        let mut class = img.clone();
        class[4] = 3;
        assert!(matches!(load32(&class).0, Err(ElfError::Malformed(_))));
        let mut rel = img.clone();
        rel[16] = 1; // ET_REL
        assert_eq!(load32(&rel).0, Err(ElfError::NotExecutable { e_type: 1 }));
        // no PT_LOAD at all
        let (notes, _) = build(
            false,
            0,
            &[Seg {
                p_type: 4,
                paddr: DA,
                vaddr: DA,
                data: vec![1],
                memsz: 1,
            }],
            &[],
        );
        assert_eq!(load32(&notes).0, Err(ElfError::NoLoadableSegment));
        // an empty PT_LOAD does not count
        let (empty, _) = build(false, 0, &[load_seg(DA, &[], 0)], &[]);
        assert_eq!(load32(&empty).0, Err(ElfError::NoLoadableSegment));
    }

    proptest! {
        /// Corrupted and truncated images never panic, and a failed load
        /// never writes outside what validation allowed.
        #[test]
        fn mutated_images_never_panic(
            is64 in any::<bool>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let (mut img, _) = firmware(is64);
            for (at, byte) in flips {
                let i = at.index(img.len());
                img[i] = byte;
            }
            if truncate {
                img.truncate(cut.index(img.len() + 1));
            }
            let r = region();
            let res = load(&img, &r, &map(), SegmentAddr::Physical);
            if res.is_err() {
                prop_assert_eq!(read(&r, 0, MEM), vec![0xaa; MEM]);
            }
            if let Ok(parsed) = ElfImage::parse(&img) {
                let _ = parsed.resource_table_bytes();
                let _ = parsed.load(&r, &map(), SegmentAddr::Virtual);
            }
        }

        /// Arbitrary bytes behind a valid ELF identification never panic.
        #[test]
        #[cfg_attr(miri, ignore = "ELF header parsing of random bytes, ~30 s under Miri; the loads that reach the region run in mutated_images_never_panic")]
        fn random_headers_never_panic(
            is64 in any::<bool>(),
            tail in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let mut img = vec![0x7f, b'E', b'L', b'F', if is64 { 2 } else { 1 }, 1, 1];
            img.resize(16, 0);
            img.extend_from_slice(&tail);
            let _ = load(&img, &region(), &map(), SegmentAddr::Physical);
        }
    }
}
