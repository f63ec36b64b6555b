//! POSIX shared-memory objects (`/dev/shm/NAME`) mapped as [`Region`]s.
//!
//! This module and the core's `shm` seam are the only places with `unsafe`.
#![allow(unsafe_code)]

use rptun::shm::Region;
use rustix::fd::OwnedFd;
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};
use rustix::shm as pshm;
use std::ptr::NonNull;
use std::sync::Arc;

/// Errors opening or mapping a shared-memory object.
#[derive(Debug, thiserror::Error)]
pub enum ShmObjectError {
    /// `shm_open` failed.
    #[error(
        "cannot open shared-memory object /dev/shm/{name}: {err}; check that /dev/shm is \
         mounted and writable, or remove a stale object with `rm /dev/shm/{name}`"
    )]
    Open {
        /// Object name (without the leading slash).
        name: String,
        /// OS error.
        err: rustix::io::Errno,
    },
    /// The object exists with a different size than expected.
    #[error(
        "shared-memory object /dev/shm/{name} is {actual} bytes, expected {expected}; another \
         program uses this name with another layout: stop it or remove /dev/shm/{name}"
    )]
    Size {
        /// Object name.
        name: String,
        /// Size found.
        actual: u64,
        /// Size wanted.
        expected: u64,
    },
    /// `ftruncate`, `fstat` or `mmap` failed.
    #[error("cannot size or map shared-memory object /dev/shm/{name}: {err}")]
    Map {
        /// Object name.
        name: String,
        /// OS error.
        err: rustix::io::Errno,
    },
}

/// A mapping that unmaps itself when the last region using it is dropped.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    _fd: OwnedFd,
}

// SAFETY: the mapping is an owner token (unmapped on drop); the memory is only
// accessed through `Region`, whose own `Send`/`Sync` argument covers it.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`; `Mapping` has no methods that touch the memory.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what `mmap` returned, unmapped once,
        // and no region refers to the mapping any more (we are the last owner).
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A mapped POSIX shared-memory object.
pub struct ShmObject {
    name: String,
    region: Region,
    created: bool,
    /// (device, inode) of the object, to tell it from a newer one of the same
    /// name.
    id: (u64, u64),
}

/// Which object a name referred to when it was opened: tells whether
/// `/dev/shm/NAME` still is that object (cheap to clone into a thread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShmIdentity {
    name: String,
    id: (u64, u64),
}

impl ShmIdentity {
    /// True while `/dev/shm/NAME` is still this object (not unlinked, not
    /// replaced by a newer object of the same name).
    pub fn still_linked(&self) -> bool {
        match rustix::fs::stat(std::path::Path::new("/dev/shm").join(&self.name)) {
            Ok(st) => file_id(&st) == self.id,
            Err(_) => false,
        }
    }
}

impl ShmObject {
    /// Opens `/dev/shm/NAME`, creating it with `len` zero bytes if absent,
    /// and maps it read-write and shared. Either side may create it.
    pub fn open_or_create(name: &str, len: usize) -> Result<ShmObject, ShmObjectError> {
        let path = format!("/{name}");
        let mode = pshm::Mode::from_raw_mode(0o600);
        let (fd, created) = match pshm::open(
            &path,
            pshm::OFlags::CREATE | pshm::OFlags::EXCL | pshm::OFlags::RDWR,
            mode,
        ) {
            Ok(fd) => (fd, true),
            Err(rustix::io::Errno::EXIST) => (
                pshm::open(&path, pshm::OFlags::RDWR, mode).map_err(|err| {
                    ShmObjectError::Open {
                        name: name.into(),
                        err,
                    }
                })?,
                false,
            ),
            Err(err) => {
                return Err(ShmObjectError::Open {
                    name: name.into(),
                    err,
                })
            }
        };
        let map_err = |err| ShmObjectError::Map {
            name: name.into(),
            err,
        };
        let st = rustix::fs::fstat(&fd).map_err(map_err)?;
        let size = st.st_size as u64;
        let id = file_id(&st);
        if created || size == 0 {
            rustix::fs::ftruncate(&fd, len as u64).map_err(map_err)?;
        } else if size != len as u64 {
            return Err(ShmObjectError::Size {
                name: name.into(),
                actual: size,
                expected: len as u64,
            });
        }
        Ok(ShmObject {
            name: name.into(),
            region: map(fd, len).map_err(map_err)?,
            created,
            id,
        })
    }

    /// Opens an existing object of exactly `len` bytes.
    pub fn open_existing(name: &str, len: usize) -> Result<ShmObject, ShmObjectError> {
        let path = format!("/{name}");
        let fd = pshm::open(&path, pshm::OFlags::RDWR, pshm::Mode::from_raw_mode(0o600)).map_err(
            |err| ShmObjectError::Open {
                name: name.into(),
                err,
            },
        )?;
        let map_err = |err| ShmObjectError::Map {
            name: name.into(),
            err,
        };
        let st = rustix::fs::fstat(&fd).map_err(map_err)?;
        let size = st.st_size as u64;
        let id = file_id(&st);
        if size != len as u64 {
            return Err(ShmObjectError::Size {
                name: name.into(),
                actual: size,
                expected: len as u64,
            });
        }
        Ok(ShmObject {
            name: name.into(),
            region: map(fd, len).map_err(map_err)?,
            created: false,
            id,
        })
    }

    /// The mapped bytes.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The object's name (without `/dev/shm/`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True if this call created the object.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Removes the name from `/dev/shm` (existing mappings stay valid).
    pub fn unlink(&self) -> std::io::Result<()> {
        unlink(&self.name)
    }

    /// The object's identity (see [`ShmIdentity`]).
    pub fn identity(&self) -> ShmIdentity {
        ShmIdentity {
            name: self.name.clone(),
            id: self.id,
        }
    }

    /// True while `/dev/shm/NAME` is still this object (not unlinked, not
    /// replaced by a newer object of the same name).
    pub fn still_linked(&self) -> bool {
        self.identity().still_linked()
    }

    /// Removes the name only if it still names this object (so a newer
    /// object of the same name is left alone). True if removed.
    pub fn unlink_if_ours(&self) -> bool {
        self.still_linked() && self.unlink().is_ok()
    }
}

/// (device, inode): the field types differ between targets.
#[allow(clippy::unnecessary_cast)]
fn file_id(st: &rustix::fs::Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

/// Removes `/dev/shm/NAME`; a missing object is not an error.
pub fn unlink(name: &str) -> std::io::Result<()> {
    match pshm::unlink(format!("/{name}")) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// True if `/dev/shm/NAME` exists.
pub fn exists(name: &str) -> bool {
    std::path::Path::new("/dev/shm").join(name).exists()
}

fn map(fd: OwnedFd, len: usize) -> rustix::io::Result<Region> {
    // SAFETY: a fresh shared mapping of `len` bytes of `fd` at an address the
    // kernel picks; it aliases no Rust object.
    let p = unsafe {
        mmap(
            std::ptr::null_mut(),
            len.max(1),
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            &fd,
            0,
        )?
    };
    let ptr = NonNull::new(p.cast::<u8>()).ok_or(rustix::io::Errno::NOMEM)?;
    let owner = Arc::new(Mapping {
        ptr,
        len: len.max(1),
        _fd: fd,
    });
    // SAFETY: `ptr..ptr+len` is a live read-write mapping kept alive by
    // `owner`, which the region and all its clones hold; this program touches
    // it only through regions.
    Ok(unsafe { Region::from_raw_parts_owned(ptr, len, owner) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_mappings_of_one_object_share_bytes_and_unlink_cleans_up() {
        let name = format!("rptun-test-{}", std::process::id());
        let a = ShmObject::open_or_create(&name, 8192).unwrap();
        assert!(a.created());
        let b = ShmObject::open_or_create(&name, 8192).unwrap();
        assert!(!b.created());
        a.region().store_u32(100, 0xC0FFEE).unwrap();
        assert_eq!(b.region().load_u32(100).unwrap(), 0xC0FFEE);
        assert!(matches!(
            ShmObject::open_existing(&name, 4096),
            Err(ShmObjectError::Size { actual: 8192, .. })
        ));
        assert!(a.still_linked() && b.still_linked());
        a.unlink().unwrap();
        assert!(!exists(&name));
        assert!(!b.still_linked());
        assert!(!b.unlink_if_ours());
        // mappings survive the unlink
        assert_eq!(b.region().load_u32(100).unwrap(), 0xC0FFEE);
        assert!(ShmObject::open_existing(&name, 8192).is_err());
    }
}
