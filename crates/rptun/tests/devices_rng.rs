//! virtio-rng, driver and device, over every transport in one process.
#![cfg(all(feature = "rng", feature = "alloc"))]

mod devices_common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use devices_common::{deadline, links, tries, DynDevice, DynTransport, Stream, Vanishing};
use rptun::devices::rng::{
    EntropyError, RngDevice, RngDriver, RngDriverConfig, NUTTX_REQUEST_SIZE, REQUEST_QUEUE,
};
use rptun::devices::DeviceError;
use rptun::virtio::queue::{DeviceQueue, DriverQueue, VRING_DESC_F_WRITE};
use rptun::virtio::{feature, id, status, DeviceTransport, Transport};

fn rng_links() -> Vec<(&'static str, (DynTransport, DynDevice))> {
    links(id::ENTROPY, &[8], &[])
}

/// An entropy source replaying a known stream, so tests can check that the
/// driver hands out exactly what the device produced.
fn stream_source(seed: u64) -> impl FnMut(&mut [u8]) -> Result<(), EntropyError> + Send {
    let mut s = Stream::new(seed);
    move |buf: &mut [u8]| {
        s.fill(buf);
        Ok(())
    }
}

#[test]
fn requested_bytes_are_the_devices_random_bytes_and_differ_between_requests() {
    for (name, (t, d)) in rng_links() {
        let mut drv = RngDriver::new(t).unwrap();
        assert_eq!(
            drv.features() & 1 << feature::RING_EVENT_IDX != 0,
            name.ends_with("event-idx"),
            "{name}"
        );
        assert_eq!(
            drv.transport().status().unwrap() & status::FEATURES_OK != 0,
            name == "virtio-mmio+event-idx",
            "{name}: FEATURES_OK only for VERSION_1 devices"
        );
        let mut dev = RngDevice::new(d, stream_source(7)).unwrap();
        let mut expected = Stream::new(7);

        let mut first = [0u8; 1024];
        let mut second = [0u8; 1024];
        for out in [&mut first, &mut second] {
            // Step both sides by hand: request, serve, collect.
            assert_eq!(
                drv.fill(out).unwrap(),
                0,
                "{name}: nothing before the device ran"
            );
            assert_eq!(dev.poll().unwrap(), 1, "{name}: one 1024-byte request");
            assert_eq!(drv.fill(out).unwrap(), 1024, "{name}");
        }
        assert_eq!(
            first.to_vec(),
            expected.bytes(1024),
            "{name}: first request"
        );
        assert_eq!(
            second.to_vec(),
            expected.bytes(1024),
            "{name}: second request"
        );
        assert_ne!(first, second, "{name}: requests must differ");
    }
}

#[test]
fn a_driver_thread_and_a_device_thread_exchange_random_bytes() {
    for (name, (t, d)) in rng_links() {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let device = thread::spawn(move || {
            let mut dev = RngDevice::new(d, stream_source(99)).unwrap();
            while !stop2.load(Ordering::Relaxed) {
                if dev.poll().unwrap() == 0 {
                    thread::yield_now();
                }
            }
            dev.served()
        });
        let mut drv = RngDriver::new(t).unwrap();
        let mut seen = Vec::new();
        // Sizes below, at and above one buffer, and above all buffers.
        for len in [1usize, 100, 1024, 3000, 10_000] {
            let mut out = vec![0u8; len];
            drv.read(&mut out, deadline(Duration::from_secs(10)))
                .unwrap_or_else(|e| panic!("{name}: read {len}: {e}"));
            seen.push(out);
        }
        stop.store(true, Ordering::Relaxed);
        assert!(
            device.join().unwrap() >= 14,
            "{name}: at least 14 requests of 1 KiB"
        );
        let all: Vec<u8> = seen.concat();
        // Every byte comes from the device's stream, each at most once:
        // the stream prefix holds them all.
        let mut reference = Stream::new(99).bytes(all.len() + 8 * 1024);
        reference.sort_unstable();
        let mut got = all.clone();
        got.sort_unstable();
        let mut i = 0;
        for b in got {
            while i < reference.len() && reference[i] < b {
                i += 1;
            }
            assert!(
                i < reference.len() && reference[i] == b,
                "{name}: byte not from the device"
            );
            i += 1;
        }
        assert_ne!(seen[3][..1000], seen[4][..1000], "{name}");
    }
}

#[test]
fn the_driver_posts_single_writable_1024_byte_descriptors_from_shared_memory() {
    for (name, (t, d)) in rng_links() {
        let mut drv = RngDriver::new(t).unwrap();
        assert_eq!(drv.request(1).unwrap(), 1024, "{name}");
        // Look at the request with a bare device queue, as NuttX's device
        // would see it.
        assert_ne!(d.status().unwrap() & status::DRIVER_OK, 0, "{name}");
        let mem = d.queue(REQUEST_QUEUE).unwrap();
        let mut q = DeviceQueue::new(mem.region.clone(), mem.layout, mem.window, false).unwrap();
        let chain = q.pop::<4>().unwrap().expect("a posted request");
        assert_eq!(chain.len(), 1, "{name}: one descriptor");
        assert_eq!(chain.readable().len(), 0, "{name}");
        assert_eq!(
            chain.writable_len(),
            u64::from(NUTTX_REQUEST_SIZE),
            "{name}"
        );
        // The raw descriptor: device-writable, address inside the window.
        let desc = mem.layout.desc_at(chain.head());
        let addr = mem.region.read_u64(desc).unwrap();
        let flags = mem.region.read_u16(desc + 12).unwrap();
        assert_eq!(flags, VRING_DESC_F_WRITE, "{name}");
        let off = mem
            .window
            .to_offset(addr, 1024)
            .unwrap_or_else(|e| panic!("{name}: buffer outside the shared window: {e}"));
        let ring_end = mem.layout.used + 6 + 8 * usize::from(mem.layout.num);
        assert!(
            off + 1024 <= mem.layout.desc || off >= ring_end,
            "{name}: the buffer does not overlap the ring"
        );
        assert!(
            q.pop::<4>().unwrap().is_none(),
            "{name}: one request for one byte"
        );
    }
}

#[test]
fn a_nuttx_style_request_is_filled_completely() {
    // A driver that is not ours (a bare queue, as NuttX's) posts one
    // 1024-byte device-writable descriptor; the device fills all of it.
    for (name, (mut t, d)) in rng_links() {
        t.set_status(0).unwrap();
        t.set_status(status::ACKNOWLEDGE | status::DRIVER).unwrap();
        t.set_driver_features(0).unwrap();
        let mem = t.setup_queue(REQUEST_QUEUE, 8).unwrap();
        let mut q =
            DriverQueue::<8>::new(mem.region.clone(), mem.layout, mem.window, false).unwrap();
        let buf = t.alloc_shared(1024, 8).unwrap();
        mem.region.fill(buf, 1024, 0).unwrap();
        t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK)
            .unwrap();
        let mut dev = RngDevice::new(d, stream_source(3)).unwrap();
        assert_eq!(dev.poll().unwrap(), 0, "{name}: nothing posted yet");
        let head = q
            .add(&[], &[rptun::virtio::queue::Buf::new(buf, 1024)])
            .unwrap();
        q.publish().unwrap();
        assert_eq!(dev.poll().unwrap(), 1, "{name}");
        let used = q.pop_used().unwrap().expect("returned");
        assert_eq!((used.head, used.len), (head, 1024), "{name}");
        let mut got = vec![0u8; 1024];
        mem.region.read_bytes(buf, &mut got).unwrap();
        assert_eq!(got, Stream::new(3).bytes(1024), "{name}");
    }
}

#[test]
fn a_device_that_never_answers_times_out_and_the_request_survives() {
    for (name, (t, d)) in rng_links() {
        let mut drv = RngDriver::new(t).unwrap();
        let mut out = [0u8; 64];
        assert_eq!(
            drv.read(&mut out, deadline(Duration::from_millis(50))),
            Err(DeviceError::Timeout),
            "{name}"
        );
        assert_eq!(
            drv.read(&mut out, tries(3)),
            Err(DeviceError::Timeout),
            "{name}"
        );
        // Only one request went out: a timed-out request stays posted and
        // is not posted again.
        assert_eq!(drv.in_flight(), 1024, "{name}");
        // The device comes up late: the old request is answered and used.
        let mut dev = RngDevice::new(d, stream_source(5)).unwrap();
        assert_eq!(dev.poll().unwrap(), 1, "{name}");
        drv.read(&mut out, tries(1)).unwrap();
        assert_eq!(out.to_vec(), Stream::new(5).bytes(64), "{name}");
    }
}

#[test]
fn a_peer_vanishing_mid_request_is_reported_at_once() {
    for (name, (t, d)) in rng_links() {
        let (t, gone) = Vanishing::new(t);
        let mut drv = RngDriver::new(t).unwrap();
        let mut dev = RngDevice::new(d, stream_source(1)).unwrap();
        let mut out = [0u8; 2048];
        // Half the request is answered, then the peer vanishes.
        assert_eq!(drv.fill(&mut out).unwrap(), 0);
        dev.set_max_request(512);
        dev.poll().unwrap();
        gone.store(true, Ordering::SeqCst);
        let waits = AtomicUsize::new(0);
        let r = drv.read(&mut out, || {
            waits.fetch_add(1, Ordering::SeqCst);
            true // would wait forever: only the liveness check can end it
        });
        assert_eq!(r, Err(DeviceError::Gone), "{name}");
        assert!(r.unwrap_err().is_peer_lost());
        assert_eq!(waits.load(Ordering::SeqCst), 0, "{name}: no wait once gone");
    }
}

#[test]
fn a_device_thread_dying_mid_request_gives_a_timeout_not_a_hang() {
    for (name, (t, d)) in rng_links() {
        let mut drv = RngDriver::new(t).unwrap();
        let mut out = [0u8; 4096];
        assert_eq!(drv.fill(&mut out).unwrap(), 0);
        // The device takes the requests and dies without returning them.
        thread::spawn(move || {
            let mem = d.queue(REQUEST_QUEUE).unwrap();
            let mut q = DeviceQueue::new(mem.region, mem.layout, mem.window, false).unwrap();
            while q.pop::<4>().unwrap().is_some() {}
        })
        .join()
        .unwrap();
        assert_eq!(
            drv.read(&mut out, deadline(Duration::from_millis(100))),
            Err(DeviceError::Timeout),
            "{name}"
        );
    }
}

#[test]
fn a_device_asking_for_a_reset_ends_the_wait() {
    for (name, (t, mut d)) in rng_links() {
        let mut drv = RngDriver::new(t).unwrap();
        let mut out = [0u8; 16];
        assert_eq!(drv.fill(&mut out).unwrap(), 0);
        d.set_needs_reset().unwrap();
        assert_eq!(
            drv.read(&mut out, || true),
            Err(DeviceError::NeedsReset),
            "{name}"
        );
    }
}

#[test]
fn a_driver_posting_memory_outside_the_window_gets_needs_reset() {
    for (name, (mut t, d)) in rng_links() {
        t.set_status(0).unwrap();
        t.set_status(status::ACKNOWLEDGE | status::DRIVER).unwrap();
        let mem = t.setup_queue(REQUEST_QUEUE, 8).unwrap();
        let q = DriverQueue::<8>::new(mem.region.clone(), mem.layout, mem.window, false).unwrap();
        t.set_status(status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK)
            .unwrap();
        // Hand-write a descriptor pointing below the window and publish it.
        let desc = mem.layout.desc_at(0);
        mem.region.write_u64(desc, mem.window.pa - 4096).unwrap();
        mem.region.write_u32(desc + 8, 1024).unwrap();
        mem.region.write_u16(desc + 12, VRING_DESC_F_WRITE).unwrap();
        mem.region.write_u16(mem.layout.avail_ring(0), 0).unwrap();
        mem.region.store_u16(mem.layout.avail_idx(), 1).unwrap();
        drop(q);
        let mut dev = RngDevice::new(d, stream_source(1)).unwrap();
        let e = dev.poll().unwrap_err();
        assert!(matches!(e, DeviceError::Queue(_)), "{name}: {e}");
        assert_ne!(
            t.status().unwrap() & status::DEVICE_NEEDS_RESET,
            0,
            "{name}"
        );
        // Stays detached (no error storm) until the driver resets.
        assert_eq!(dev.poll(), Ok(0), "{name}");
        assert!(!dev.is_attached(), "{name}");
        // A fresh driver brings it back.
        let mut drv = RngDriver::new(t).unwrap();
        let mut out = [0u8; 8];
        assert_eq!(drv.fill(&mut out).unwrap(), 0);
        assert_eq!(dev.poll(), Ok(1), "{name}: the device noticed the reset");
        assert_eq!(drv.fill(&mut out).unwrap(), 8, "{name}");
    }
}

#[test]
fn a_driver_reset_detaches_the_device_and_a_new_driver_is_served() {
    for (name, (t, d)) in rng_links() {
        let mut dev = RngDevice::new(d, stream_source(11)).unwrap();
        let mut drv = RngDriver::new(t).unwrap();
        let mut out = [0u8; 32];
        drv.fill(&mut out).unwrap();
        assert_eq!(dev.poll().unwrap(), 1);
        assert!(dev.is_attached());
        let t = drv.shutdown();
        assert_eq!(dev.poll(), Err(DeviceError::Reset), "{name}");
        assert_eq!(dev.poll(), Ok(0), "{name}: reported once");
        let mut drv = RngDriver::new(t).unwrap();
        assert_eq!(drv.fill(&mut out).unwrap(), 0);
        assert_eq!(dev.poll(), Ok(1), "{name}");
        assert_eq!(drv.fill(&mut out).unwrap(), 32, "{name}");
    }
}

#[test]
fn a_failing_entropy_source_returns_the_request_empty_and_the_driver_asks_again() {
    for (name, (t, d)) in rng_links() {
        let fail = Arc::new(AtomicBool::new(true));
        let f2 = fail.clone();
        let mut s = Stream::new(4);
        let src = move |buf: &mut [u8]| {
            if f2.load(Ordering::SeqCst) {
                Err(EntropyError)
            } else {
                s.fill(buf);
                Ok(())
            }
        };
        let mut dev = RngDevice::new(d, src).unwrap();
        let mut drv = RngDriver::new(t).unwrap();
        let mut out = [0u8; 100];
        assert_eq!(drv.fill(&mut out).unwrap(), 0);
        assert_eq!(dev.poll(), Err(DeviceError::Entropy), "{name}");
        assert_eq!(
            drv.fill(&mut out).unwrap(),
            0,
            "{name}: empty answer, asked again"
        );
        assert_eq!(drv.in_flight(), 1024, "{name}");
        fail.store(false, Ordering::SeqCst);
        assert_eq!(dev.poll(), Ok(1), "{name}");
        assert_eq!(drv.fill(&mut out).unwrap(), 100, "{name}");
        assert_eq!(out.to_vec(), Stream::new(4).bytes(100), "{name}");
    }
}

#[test]
fn wrong_device_ids_and_empty_configs_are_refused() {
    let (t, d) = devices_common::mmio_link(id::CONSOLE, &[8, 8], &[0; 12]);
    assert_eq!(
        RngDriver::new(t).unwrap_err(),
        DeviceError::WrongDevice {
            expected: id::ENTROPY,
            found: id::CONSOLE
        }
    );
    assert!(matches!(
        RngDevice::new(d, stream_source(1)),
        Err(DeviceError::WrongDevice { .. })
    ));
    let (t, _) = devices_common::mmio_link(id::ENTROPY, &[8], &[]);
    let cfg = RngDriverConfig {
        buffers: 0,
        ..RngDriverConfig::default()
    };
    assert!(matches!(
        RngDriver::<_, 8>::with_config(t, cfg),
        Err(DeviceError::BadConfig(_))
    ));
}

#[test]
fn a_driver_restart_the_device_did_not_see_is_noticed() {
    for (name, (t, d)) in rng_links() {
        let mut drv = RngDriver::new(t).unwrap();
        let mut dev = RngDevice::new(d, stream_source(8)).unwrap();
        let mut out = [0u8; 16];
        drv.fill(&mut out).unwrap();
        assert_eq!(dev.poll(), Ok(1));
        // Reset and re-initialise while the device is not looking.
        let mut drv = RngDriver::new(drv.shutdown()).unwrap();
        assert_eq!(drv.fill(&mut out).unwrap(), 0);
        assert_eq!(dev.poll(), Err(DeviceError::Reset), "{name}");
        assert_eq!(dev.poll(), Ok(1), "{name}");
        assert_eq!(drv.fill(&mut out).unwrap(), 16, "{name}");
    }
}
