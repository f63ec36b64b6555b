//! Both roles of the platform against each other (over a real shm object
//! and socket, with names of their own so they can run beside the oracle
//! tests), and the Linux-compatible details a peer sees in memory.

use super::echo::{echo_payload, serve_echo, EchoClient, EchoEnd, EchoHandler, ReplySink};
use super::layout::*;
use super::*;
use rptun::remoteproc::platform::{Doorbell, PlatformError};
use rptun::rpmsg::{Binding, EndpointConfig, NS_ADDR};
use std::sync::atomic::{AtomicUsize, Ordering};

const T: Duration = Duration::from_secs(20);

fn unique_cfg(tag: &str) -> Config {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = format!("rptun-openamp-{tag}-{}-{n}", std::process::id());
    Config::named(&name, std::env::temp_dir().join(format!("{name}.sock")))
}

/// Runs the echo device in a thread; returns its summary.
fn spawn_device(cfg: &Config) -> std::thread::JoinHandle<Result<echo::EchoSummary, String>> {
    // The table is written and the socket listens before this returns, so
    // the driver can connect at once.
    let server = DeviceServer::create(cfg).unwrap();
    std::thread::spawn(move || {
        let mut ol = server.accept(Some(T)).map_err(|e| e.to_string())?;
        serve_echo(&mut ol, Some(T), |_| {}).map_err(|e| e.to_string())
    })
}

fn u16_at(r: &Region, o: usize) -> u16 {
    r.read_u16(o).unwrap()
}
fn u32_at(r: &Region, o: usize) -> u32 {
    r.read_u32(o).unwrap()
}

#[test]
fn our_driver_and_device_echo_every_size_and_end_with_ns_destroy() {
    let cfg = unique_cfg("echo");
    let dev = spawn_device(&cfg);
    let mut ol = connect_driver(&cfg, T).unwrap();
    assert!(ol
        .table_summary()
        .contains("vring0 0x4000 x256 align 0x1000 notifyid 1"));
    let mut c = EchoClient::bind(&mut ol, T).unwrap();
    assert_eq!((c.local(), c.peer()), (0x400, 0x400));
    assert_eq!(ol.link().max_payload(), 496);
    for (seq, len) in (1..=496usize).enumerate() {
        c.echo(&mut ol, &echo_payload(seq as u64, len), T).unwrap();
    }

    // What the device sees in memory (DESIGN.md §10).
    let r = ol.region().clone();
    assert_eq!(u32_at(&r, GFEATURES_OFFSET), 1, "only NS is accepted");
    assert_ne!(r.read_u8(STATUS_OFFSET).unwrap() & 4, 0, "DRIVER_OK");
    let (v0, v1) = (VRING0_DA as usize, VRING1_DA as usize);
    let (avail0, used0) = (v0 + 0x1000, v0 + 0x2000);
    let (avail1, used1) = (v1 + 0x1000, v1 + 0x2000);
    assert_eq!(u16_at(&r, avail0), 0, "the driver wants kicks for RX");
    assert_eq!(u16_at(&r, avail1), 1, "vring1 avail flags: NO_INTERRUPT");
    let mut rx_addrs: Vec<u64> = (0..256)
        .map(|i| {
            let d = v0 + 16 * i;
            assert_eq!(u32_at(&r, d + 8), 512, "RX descriptors are whole buffers");
            assert_eq!(u16_at(&r, d + 12), 2, "RX descriptors are device-writable");
            r.read_u64(d).unwrap()
        })
        .collect();
    rx_addrs.sort_unstable();
    let expect: Vec<u64> = (0..256).map(|i| 0x10000 + 512 * i).collect();
    assert_eq!(rx_addrs, expect, "256 RX buffers of 512 B from 0x10000");
    // 496 echoes + the NS announcement came back on vring0; 496 requests
    // + our NS CREATE went out on vring1.
    assert_eq!(u16_at(&r, used0 + 2), 497);
    assert_eq!(u16_at(&r, avail1 + 2), 497);
    for i in 0..256 {
        assert_eq!(u32_at(&r, used0 + 4 + 8 * i + 4), 512, "device used length");
        assert_eq!(u32_at(&r, used1 + 4 + 8 * i + 4), 512, "device used length");
    }
    // TX buffers are taken from 0x30000 upward as needed (one or two are
    // enough for one request at a time).
    let tx: Vec<(u64, u32, u16)> = (0..256)
        .map(|i| {
            let d = v1 + 16 * i;
            (
                r.read_u64(d).unwrap(),
                u32_at(&r, d + 8),
                u16_at(&r, d + 12),
            )
        })
        .filter(|&(addr, _, _)| addr != 0)
        .collect();
    assert!(tx.iter().any(|&(a, _, _)| a == 0x30000), "{tx:x?}");
    for &(addr, len, flags) in &tx {
        assert!(
            (0x30000..0x80000).contains(&addr) && addr % 512 == 0,
            "{addr:#x}"
        );
        assert_eq!(
            (len, flags),
            (512, 0),
            "TX descriptors: whole buffers, readable"
        );
    }
    assert!(
        c.close(&mut ol, T).unwrap(),
        "the device took every message"
    );
    let sum = dev.join().unwrap().unwrap();
    assert_eq!(sum.end, EchoEnd::PeerDestroyed { addr: 0x400 });
    assert_eq!((sum.local, sum.echoed, sum.dropped), (0x400, 496, 0));
    assert_eq!(sum.bytes, (1..=496u64).sum::<u64>());
    drop(ol);
    assert!(
        !crate::shm::exists(&cfg.shm_name),
        "the device removes the object"
    );
    assert!(!cfg.socket_path.exists(), "and the socket");
}

#[test]
fn the_shutdown_message_stops_the_device_which_destroys_the_channel() {
    let cfg = unique_cfg("shutdown");
    let dev = spawn_device(&cfg);
    let mut ol = connect_driver(&cfg, T).unwrap();
    let mut c = EchoClient::bind(&mut ol, T).unwrap();
    c.echo(&mut ol, b"before", T).unwrap();
    c.send_shutdown(&mut ol, T).unwrap();
    let sum = dev.join().unwrap().unwrap();
    assert_eq!((sum.end, sum.echoed), (EchoEnd::Shutdown, 1));
    assert!(
        c.wait_channel_destroyed(&mut ol, T).unwrap(),
        "NS DESTROY from the device"
    );
    let ept = c.endpoint();
    assert!(ol
        .link()
        .handler::<ReplySink>(ept)
        .unwrap()
        .replies
        .is_empty());
}

#[test]
fn a_driver_without_a_device_gives_up_with_a_clear_error() {
    let cfg = unique_cfg("nodev");
    let e = connect_driver(&cfg, Duration::from_millis(100)).unwrap_err();
    assert!(matches!(e, OpenampError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains("start the device side first"), "{e}");
}

#[derive(Clone)]
struct NoKick;
impl Notify for NoKick {
    fn notify(&self, _: Doorbell) -> Result<(), PlatformError> {
        Ok(())
    }
}

/// Both roles over one heap region, polled by hand (no socket).
fn in_memory() -> (Link<DeviceTransport<NoKick>>, Link<DriverTransport<NoKick>>) {
    let r = Region::new_heap(SHM_SIZE);
    write_resource_table(&r).unwrap();
    let cfg = Config::default();
    let dev = device_transport(r.clone(), NoKick, cfg.options().unwrap(), "heap").unwrap();
    let mut drv = driver_transport(r, NoKick, cfg.options().unwrap(), "heap").unwrap();
    drv.start().unwrap();
    (Link::new(dev), Link::new(drv))
}

#[test]
fn an_ns_name_with_garbage_after_its_nul_binds_the_echo() {
    let (mut dev, mut drv) = in_memory();
    let echo = dev
        .create_endpoint(EndpointConfig::new(SERVICE_NAME), EchoHandler::default())
        .unwrap();
    dev.poll().unwrap();
    drv.poll().unwrap();
    assert!(dev.is_up() && drv.is_up());
    assert!(drv
        .pending_announcements()
        .any(|a| a.name == SERVICE_NAME && a.addr == 0x400));
    // An OpenAMP-style announcement: the name, NUL, then garbage.
    let me = drv
        .create_endpoint(EndpointConfig::unnamed(), ReplySink::default())
        .unwrap();
    let mut ns = [0xa5u8; 40];
    ns[..SERVICE_NAME.len()].copy_from_slice(SERVICE_NAME.as_bytes());
    ns[SERVICE_NAME.len()] = 0;
    ns[32..36].copy_from_slice(&0x400u32.to_le_bytes());
    ns[36..40].copy_from_slice(&0u32.to_le_bytes());
    drv.trysendto(me, NS_ADDR, &ns).unwrap();
    dev.poll().unwrap();
    let e = dev.endpoint(echo).unwrap();
    assert_eq!((e.dest, e.binding), (0x400, Binding::NameService));
    drv.trysendto(me, 0x400, b"hello").unwrap();
    dev.poll().unwrap();
    drv.poll().unwrap();
    let h = drv.handler::<ReplySink>(me).unwrap();
    assert_eq!(h.replies.front(), Some(&(0x400, b"hello".to_vec())));
    assert_eq!(dev.features().to_string(), "NS");
    assert_eq!(drv.features().to_string(), "NS");
}

#[test]
fn a_table_that_puts_a_vring_in_the_buffer_pool_is_refused() {
    let r = Region::new_heap(SHM_SIZE);
    write_resource_table(&r).unwrap();
    // vring1's da (vdev at 20, vrings after its 28 bytes, 20 bytes each)
    r.write_u32(20 + 28 + 20, 0x10000).unwrap();
    let opts = Config::default().options().unwrap();
    let e = driver_transport(r.clone(), NoKick, opts, "heap").unwrap_err();
    assert!(
        matches!(
            e,
            OpenampError::VringPlacement {
                queue: 1,
                da: 0x10000,
                ..
            }
        ),
        "{e:?}"
    );
    r.write_u32(20 + 28 + 20, 0x5000).unwrap();
    let e = driver_transport(r.clone(), NoKick, opts, "heap").unwrap_err();
    assert!(
        matches!(e, OpenampError::VringPlacement { what: "vring0", .. }),
        "{e:?}"
    );
    // Not an rpmsg device at all.
    r.write_u32(20 + 28 + 20, 0x8000).unwrap();
    r.write_u32(20 + 4, 4).unwrap();
    let e = driver_transport(r, NoKick, opts, "heap").unwrap_err();
    assert!(matches!(e, OpenampError::NoRpmsgVdev { .. }), "{e:?}");
}
