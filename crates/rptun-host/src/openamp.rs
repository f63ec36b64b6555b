//! The OpenAMP Linux-demo platform: interoperate with OpenAMP's Linux
//! user-space demos (openamp-system-reference `legacy_apps`, "generic" Linux
//! machine) and anything else that follows their contract (DESIGN.md §10).
//!
//! Two processes share the POSIX shm object `openamp.shm` (512 KiB; every
//! address in it is a byte offset, so `pa = offset`) and kick each other over
//! one AF_UNIX stream socket, `/tmp/openamp.event.0` ([`kick`]). The virtio
//! **device** (rpmsg "remote": OpenAMP's `rpmsg-echo`) is the socket server
//! and writes the resource table ([`layout`]); the virtio **driver** (rpmsg
//! "host": `rpmsg-echo-ping`, `msg-test-rpmsg-ping`) connects, reads the
//! table and drives the vdev.
//!
//! Nothing here is a new transport: the vdev is the remoteproc vdev transport
//! ([`VdevDevice`] / [`VdevDriver`] over the table, adopted or assigned by
//! [`rptun::remoteproc::table`]), rpmsg is the one rpmsg-virtio in its
//! Linux-compatible mode ([`RpmsgVirtioOptions::linux`]: only NS negotiated,
//! 512-byte buffers, whole-buffer descriptor and used lengths), and the bus
//! is the ordinary [`Link`]. This module adds what is specific to the demos:
//! the object and socket, the table, the buffer pool the driver uses
//! (`0x10000..0x80000`: RX buffers from `0x10000`, TX from `0x30000`), and
//! the kick doorbell ([`KickNotifier`]: every notification is the byte 0x01).
//!
//! - device: [`DeviceServer::create`] (object, table, listening socket),
//!   then [`DeviceServer::accept`]; [`echo::serve_echo`] serves
//!   `rpmsg-openamp-demo-channel` as OpenAMP's `rpmsg-echo` does;
//! - driver: [`connect_driver`]; [`echo::EchoClient`] binds the announced
//!   channel and checks echoes, as `rpmsg-echo-ping` does.
//!
//! The names are [`Config`] fields so tests and side-by-side runs can use
//! others; the OpenAMP demos themselves hard-code the defaults.
#![forbid(unsafe_code)]

pub mod echo;
pub mod kick;
pub mod layout;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rptun::remoteproc::addr::{AddrEnv, AddrError, AddressMap, PhysMap};
use rptun::remoteproc::platform::{LinkMap, Notify, TableLocation};
use rptun::remoteproc::table::{self, PoolRange, TableError, VdevInfo};
use rptun::remoteproc::vdev::{VdevDevice, VdevDriver, VdevLink};
use rptun::rpmsg::virtio::{
    RpmsgVirtioDevice, RpmsgVirtioDriver, RpmsgVirtioError, RpmsgVirtioOptions,
};
use rptun::rpmsg::{Link, LocalCpu, PollSummary, RemoteCpu, RpmsgError, RpmsgTransport};
use rptun::shm::Region;
use rptun::virtio::{Role, VirtioError};
use rptun::wire::rsc::{BuildError, VIRTIO_ID_RPMSG};

use crate::shm::{ShmObject, ShmObjectError};

pub use kick::{KickChannel, KickListener, KickNotifier, KickStats, ListenError, Woken};
pub use layout::{SHM_NAME, SHM_SIZE, SOCKET_PATH};

/// The demos' service name.
pub const SERVICE_NAME: &str = "rpmsg-openamp-demo-channel";
/// A payload starting with this u32 (little-endian) asks the echo to shut
/// down.
pub const SHUTDOWN_MAGIC: u32 = 0xEF56_A55A;
/// Largest vring the rpmsg-virtio instances here handle (the demos use 256).
pub const QUEUE_CAPACITY: usize = 256;
/// Longest wait between two rescans when no kick arrives (kicks are never
/// lost on a stream socket, but a peer may change the status byte without
/// one).
pub const RESCAN_INTERVAL: Duration = Duration::from_millis(100);

/// The device side's rpmsg transport.
pub type DeviceTransport<N = KickNotifier> = RpmsgVirtioDevice<VdevDevice<N>, QUEUE_CAPACITY>;
/// The driver side's rpmsg transport.
pub type DriverTransport<N = KickNotifier> = RpmsgVirtioDriver<VdevDriver<N>, QUEUE_CAPACITY>;

/// Errors of the OpenAMP platform.
#[derive(Debug, thiserror::Error)]
pub enum OpenampError {
    /// The shm object could not be opened or mapped.
    #[error(transparent)]
    Shm(#[from] ShmObjectError),
    /// The device could not listen on the kick socket.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// Nobody served the kick socket in time.
    #[error(
        "no OpenAMP device accepted a connection on {path} within {waited:?} ({err}); start \
         the device side first (OpenAMP's rpmsg-echo, pydevice.py, or `rptun openamp --role \
         device`), or check the socket path"
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// How long we retried.
        waited: Duration,
        /// The last connection error.
        #[source]
        err: std::io::Error,
    },
    /// No driver connected in time.
    #[error(
        "no OpenAMP driver connected to {path} within {waited:?}; start the driver side \
         (OpenAMP's rpmsg-echo-ping 1, pydriver.py, or `rptun openamp --role driver`)"
    )]
    AcceptTimeout {
        /// The socket path.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// The kick socket failed.
    #[error("kick socket: {0}")]
    Io(#[from] std::io::Error),
    /// The resource table could not be built (a bug).
    #[error("building the resource table failed: {0}")]
    Build(#[from] BuildError),
    /// The peer's resource table is unusable.
    #[error(
        "the resource table in /dev/shm/{shm} is unusable: {err}; is the device side an \
         OpenAMP Linux demo (it writes the table before it listens)?"
    )]
    Table {
        /// The shm object name.
        shm: String,
        /// What is wrong.
        #[source]
        err: TableError,
    },
    /// The table has no usable rpmsg vdev.
    #[error(
        "the resource table in /dev/shm/{shm} has no usable rpmsg vdev (virtio id 7) with two \
         vrings; the device side does not follow OpenAMP's Linux demo layout"
    )]
    NoRpmsgVdev {
        /// The shm object name.
        shm: String,
    },
    /// The table puts a vring where it collides with the table, the other
    /// vring or the buffer pool.
    #[error(
        "the resource table puts vring{queue} at {da:#x} ({num} entries, align {align:#x}), \
         overlapping {what}; the demos place vring0 at 0x4000 and vring1 at 0x8000"
    )]
    VringPlacement {
        /// The vring.
        queue: u16,
        /// Its address.
        da: u32,
        /// Its size.
        num: u32,
        /// Its alignment.
        align: u32,
        /// What it overlaps.
        what: &'static str,
    },
    /// The address map could not be described (a bug).
    #[error("address map: {0}")]
    Addr(#[from] AddrError),
    /// A cpu name given in the [`Config`] is invalid.
    #[error("invalid cpu name {0:?}: at most 31 bytes, no NUL")]
    CpuName(String),
    /// The virtio transport failed.
    #[error("virtio: {0}")]
    Virtio(#[from] VirtioError),
    /// rpmsg-virtio could not start.
    #[error("rpmsg-virtio: {0}")]
    RpmsgVirtio(#[from] RpmsgVirtioError),
    /// The rpmsg bus failed.
    #[error("rpmsg: {0}")]
    Rpmsg(#[from] RpmsgError),
    /// Something did not happen in time.
    #[error("timed out after {after:?} {what}")]
    Timeout {
        /// What we waited for.
        what: &'static str,
        /// How long.
        after: Duration,
    },
    /// The peer closed the kick socket (exited or crashed) while we still
    /// needed it.
    #[error("the peer closed the kick socket (exited or crashed) while {what}")]
    PeerGone {
        /// What we were doing.
        what: &'static str,
    },
    /// An echo came back different from what was sent.
    #[error(
        "echo of {len} bytes came back wrong: {detail}; the peer does not echo verbatim or \
         corrupts buffers"
    )]
    EchoMismatch {
        /// Length sent.
        len: usize,
        /// What differs.
        detail: String,
    },
}

/// Names and cpu names of one OpenAMP link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The shm object (`/dev/shm/NAME`).
    pub shm_name: String,
    /// The kick socket path.
    pub socket_path: PathBuf,
    /// This side's cpu name (only shown in logs and dumps: the demos have no
    /// cpu names).
    pub local_cpu: String,
    /// The peer's cpu name (idem).
    pub remote_cpu: String,
}

impl Default for Config {
    /// The demos' names: `openamp.shm` and `/tmp/openamp.event.0`.
    fn default() -> Self {
        Config {
            shm_name: SHM_NAME.into(),
            socket_path: SOCKET_PATH.into(),
            local_cpu: "rptun".into(),
            remote_cpu: "openamp".into(),
        }
    }
}

impl Config {
    /// Default cpu names with another shm object and socket.
    pub fn named(shm_name: &str, socket_path: impl Into<PathBuf>) -> Config {
        Config {
            shm_name: shm_name.into(),
            socket_path: socket_path.into(),
            ..Config::default()
        }
    }

    /// The Linux-compatible rpmsg-virtio options for this link.
    pub fn options(&self) -> Result<RpmsgVirtioOptions, OpenampError> {
        let local = LocalCpu::new(&self.local_cpu)
            .map_err(|_| OpenampError::CpuName(self.local_cpu.clone()))?;
        let remote = RemoteCpu::new(&self.remote_cpu)
            .map_err(|_| OpenampError::CpuName(self.remote_cpu.clone()))?;
        Ok(RpmsgVirtioOptions::linux(local, remote).buffers(layout::VRING_NUM as u16))
    }
}

/// The address map of the demos: identity `da = pa`, physical base 0
/// (every address is a byte offset of the object).
pub fn link_map() -> Result<LinkMap, OpenampError> {
    let phys = PhysMap::with_address_bits(0, SHM_SIZE, 32)?;
    Ok(AddressMap::new(AddrEnv::identity(), phys))
}

/// Where the resource table is.
pub fn table_location() -> TableLocation {
    TableLocation {
        offset: layout::TABLE_OFFSET,
        max_len: layout::TABLE_MAX_LEN,
    }
}

/// Clears the object and writes the device's resource table at offset 0
/// (status 0, gfeatures 0).
pub fn write_resource_table(region: &Region) -> Result<(), OpenampError> {
    let t = layout::resource_table()?;
    region.fill(0, region.len(), 0).map_err(VirtioError::from)?;
    rptun::shm::fence_release();
    region
        .write_bytes(layout::TABLE_OFFSET, &t)
        .map_err(VirtioError::from)?;
    rptun::shm::fence_full();
    Ok(())
}

fn rpmsg_vdev(t: &table::LinkTable, shm: &str) -> Result<VdevInfo, OpenampError> {
    t.vdevs()
        .filter_map(|v| v.as_ref().ok())
        .find(|v| v.id == VIRTIO_ID_RPMSG && v.num_vrings() >= 2)
        .copied()
        .ok_or_else(|| OpenampError::NoRpmsgVdev { shm: shm.into() })
}

/// Checks the driver may use the demos' buffer pool with this table: both
/// vrings lie after the table, apart, and before the pool.
fn check_vrings(region: &Region, info: &VdevInfo, extent: usize) -> Result<(), OpenampError> {
    let mut prev: Option<(usize, usize)> = None;
    for q in 0..2u16 {
        let at = info.vring_offset(q).ok_or(VirtioError::NoQueue(q))?;
        let da = region.read_u32(at).map_err(VirtioError::from)?;
        let align = region.read_u32(at + 4).map_err(VirtioError::from)?;
        let num = region.read_u32(at + 8).map_err(VirtioError::from)?;
        let bad = |what| OpenampError::VringPlacement {
            queue: q,
            da,
            num,
            align,
            what,
        };
        let n = u16::try_from(num).map_err(|_| bad("nothing (its size is unusable)"))?;
        let (s, e) =
            layout::vring_span(da, n, align).ok_or(bad("nothing (it cannot be laid out)"))?;
        if s < layout::TABLE_OFFSET + extent {
            return Err(bad("the resource table"));
        }
        if e > layout::BUFFERS_OFFSET {
            return Err(bad("the buffer pool at 0x10000"));
        }
        if let Some((s0, e0)) = prev {
            if s < e0 && s0 < e {
                return Err(bad("vring0"));
            }
        }
        prev = Some((s, e));
    }
    Ok(())
}

/// The device side's rpmsg transport over the table in `region` (which the
/// device wrote): adopts the table as the remote and wraps the vdev in
/// rpmsg-virtio's device role. Nothing is touched before the driver sets
/// DRIVER_OK (the link's first poll after that attaches).
pub fn device_transport<N: Notify + Clone>(
    region: Region,
    notifier: N,
    options: RpmsgVirtioOptions,
    shm: &str,
) -> Result<DeviceTransport<N>, OpenampError> {
    let map = link_map()?;
    let mut scratch = vec![0u8; layout::TABLE_MAX_LEN];
    let t = table::adopt(&region, table_location(), &map, &mut scratch).map_err(|err| {
        OpenampError::Table {
            shm: shm.into(),
            err,
        }
    })?;
    let info = rpmsg_vdev(&t, shm)?;
    if info.role != Role::Device {
        return Err(OpenampError::NoRpmsgVdev { shm: shm.into() });
    }
    let dev = VdevDevice::new(VdevLink::new(region, map, info, notifier))?;
    Ok(RpmsgVirtioDevice::new(dev, options))
}

/// The driver side's rpmsg transport over the table the device wrote in
/// `region`, not started yet: the table is taken as the master's (every
/// value is fixed, so nothing is written), and the driver allocates its
/// buffers from `0x10000..0x80000` (RX first, so RX buffers start at 0x10000
/// and TX buffers at 0x30000).
pub fn driver_transport<N: Notify + Clone>(
    region: Region,
    notifier: N,
    options: RpmsgVirtioOptions,
    shm: &str,
) -> Result<DriverTransport<N>, OpenampError> {
    let map = link_map()?;
    let mut scratch = vec![0u8; layout::TABLE_MAX_LEN];
    let t = table::assign(&region, table_location(), &map, &mut scratch).map_err(|err| {
        OpenampError::Table {
            shm: shm.into(),
            err,
        }
    })?;
    let mut info = rpmsg_vdev(&t, shm)?;
    if info.role != Role::Driver {
        return Err(OpenampError::NoRpmsgVdev { shm: shm.into() });
    }
    check_vrings(&region, &info, t.extent)?;
    let len = region.len().saturating_sub(layout::BUFFERS_OFFSET);
    info.pool = Some(PoolRange {
        offset: layout::BUFFERS_OFFSET,
        len,
        pa: layout::BUFFERS_OFFSET as u64,
    });
    let drv = VdevDriver::new(VdevLink::new(region, map, info, notifier))?;
    Ok(RpmsgVirtioDriver::new(drv, options))
}

/// The device side before a driver connected: the object holds the table,
/// the socket listens.
pub struct DeviceServer {
    cfg: Config,
    shm: Option<ShmObject>,
    listener: KickListener,
}

impl DeviceServer {
    /// Opens (or creates) the shm object, clears it, writes the resource
    /// table, then listens on the socket — in that order, so a driver that
    /// connects finds the table.
    pub fn create(cfg: &Config) -> Result<DeviceServer, OpenampError> {
        let shm = ShmObject::open_or_create(&cfg.shm_name, SHM_SIZE)?;
        write_resource_table(shm.region())?;
        let listener = match KickListener::bind(&cfg.socket_path) {
            Ok(l) => l,
            Err(e) => {
                let _ = shm.unlink();
                return Err(e.into());
            }
        };
        Ok(DeviceServer {
            cfg: cfg.clone(),
            shm: Some(shm),
            listener,
        })
    }

    /// The mapped object.
    pub fn region(&self) -> Option<&Region> {
        self.shm.as_ref().map(|s| s.region())
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        self.listener.path()
    }

    /// Waits up to `timeout` (forever with `None`) for the driver, then
    /// builds the link (down until the driver sets DRIVER_OK).
    pub fn accept(
        mut self,
        timeout: Option<Duration>,
    ) -> Result<OpenampLink<DeviceTransport>, OpenampError> {
        let kick = self
            .listener
            .accept(timeout)?
            .ok_or_else(|| OpenampError::AcceptTimeout {
                path: self.cfg.socket_path.clone(),
                waited: timeout.unwrap_or_default(),
            })?;
        let Some(shm) = self.shm.take() else {
            return Err(OpenampError::NoRpmsgVdev {
                shm: self.cfg.shm_name.clone(),
            });
        };
        let built = device_transport(
            shm.region().clone(),
            kick.notifier(),
            self.cfg.options()?,
            &self.cfg.shm_name,
        );
        let t = match built {
            Ok(t) => t,
            Err(e) => {
                let _ = shm.unlink();
                return Err(e);
            }
        };
        Ok(OpenampLink {
            link: Link::new(t),
            kick,
            shm,
            unlink_on_drop: true,
            summary: String::from("device: table written by this side"),
        })
    }
}

impl std::fmt::Debug for DeviceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceServer")
            .field("shm", &self.cfg.shm_name)
            .field("socket", &self.listener.path())
            .finish()
    }
}

impl Drop for DeviceServer {
    fn drop(&mut self) {
        if let Some(shm) = self.shm.take() {
            let _ = shm.unlink();
        }
    }
}

/// Connects to the device as its driver: connects to the socket (retrying
/// for up to `timeout`), maps the object the device wrote, checks its table,
/// and brings the vdev up (features NS, both vrings zeroed, 256 RX buffers
/// posted on vring0, vring1 without interrupts, DRIVER_OK; every status
/// change kicks the device).
pub fn connect_driver(
    cfg: &Config,
    timeout: Duration,
) -> Result<OpenampLink<DriverTransport>, OpenampError> {
    let kick =
        KickChannel::connect(&cfg.socket_path, timeout).map_err(|err| OpenampError::Connect {
            path: cfg.socket_path.clone(),
            waited: timeout,
            err,
        })?;
    let shm = ShmObject::open_existing(&cfg.shm_name, SHM_SIZE)?;
    let region = shm.region().clone();
    let mut t = driver_transport(
        region.clone(),
        kick.notifier(),
        cfg.options()?,
        &cfg.shm_name,
    )?;
    let summary = describe_table(&region, t.transport().info());
    t.start()?;
    Ok(OpenampLink {
        link: Link::new(t),
        kick,
        shm,
        unlink_on_drop: false,
        summary,
    })
}

fn describe_table(region: &Region, info: &VdevInfo) -> String {
    let r32 = |o: usize| region.read_u32(o).unwrap_or(0);
    let mut s = format!(
        "vdev id {} notifyid {} dfeatures {:#x}",
        info.id,
        info.notifyid,
        r32(info.dfeatures_offset())
    );
    for q in 0..info.num_vrings() {
        if let Some(at) = info.vring_offset(q) {
            s.push_str(&format!(
                ", vring{q} {:#x} x{} align {:#x} notifyid {}",
                r32(at),
                r32(at + 8),
                r32(at + 4),
                r32(at + 12)
            ));
        }
    }
    s
}

/// One side of an OpenAMP link: the rpmsg [`Link`], its kick channel and
/// the mapped object.
///
/// The device side removes the object (which it created) when dropped; the
/// driver side leaves it to the device.
pub struct OpenampLink<T: RpmsgTransport + 'static> {
    link: Link<T>,
    kick: KickChannel,
    shm: ShmObject,
    unlink_on_drop: bool,
    summary: String,
}

impl<T: RpmsgTransport + 'static> std::fmt::Debug for OpenampLink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenampLink")
            .field("shm", &self.shm.name())
            .field("up", &self.link.is_up())
            .field("kicks", &self.kick.stats())
            .finish_non_exhaustive()
    }
}

impl<T: RpmsgTransport + 'static> OpenampLink<T> {
    /// The rpmsg link.
    pub fn link(&self) -> &Link<T> {
        &self.link
    }

    /// The rpmsg link, mutably.
    pub fn link_mut(&mut self) -> &mut Link<T> {
        &mut self.link
    }

    /// The mapped object.
    pub fn region(&self) -> &Region {
        self.shm.region()
    }

    /// The kick channel.
    pub fn kick(&self) -> &KickChannel {
        &self.kick
    }

    /// What the table said, as seen when the link was made.
    pub fn table_summary(&self) -> &str {
        &self.summary
    }

    /// Polls the link until it has no more work (bounded).
    pub fn poll(&mut self) -> Result<PollSummary, OpenampError> {
        let mut total = PollSummary::default();
        for _ in 0..64 {
            let s = self.link.poll()?;
            total.received += s.received;
            total.came_up |= s.came_up;
            total.went_down |= s.went_down;
            total.more = s.more;
            if !s.more {
                break;
            }
        }
        Ok(total)
    }

    /// Waits up to `timeout` for a kick.
    pub fn wait(&mut self, timeout: Duration) -> Result<Woken, OpenampError> {
        Ok(self.kick.wait(timeout)?)
    }

    /// Polls, and waits for kicks, until `check` returns a value or
    /// `timeout` passes. `what` says what is waited for (in errors).
    pub fn run_until<R>(
        &mut self,
        timeout: Duration,
        what: &'static str,
        mut check: impl FnMut(&mut Link<T>) -> Option<R>,
    ) -> Result<R, OpenampError> {
        let start = Instant::now();
        loop {
            self.poll()?;
            if let Some(r) = check(&mut self.link) {
                return Ok(r);
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(OpenampError::Timeout {
                    what,
                    after: timeout,
                });
            }
            if self.wait(left.min(RESCAN_INTERVAL))? == Woken::PeerClosed {
                // Whatever the peer did before it left is in memory.
                self.poll()?;
                return check(&mut self.link).ok_or(OpenampError::PeerGone { what });
            }
        }
    }
}

impl<T: RpmsgTransport + 'static> Drop for OpenampLink<T> {
    fn drop(&mut self) {
        if self.unlink_on_drop {
            let _ = self.shm.unlink();
        }
    }
}

#[cfg(test)]
mod tests;
