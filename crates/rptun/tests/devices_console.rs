//! virtio-console, driver and device, over every transport in one process.
#![cfg(all(feature = "console", feature = "alloc"))]

mod devices_common;

use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use devices_common::{deadline, links, tries, DynDevice, DynTransport, Stream, Vanishing};
use rptun::devices::console::{ConsoleDevice, ConsoleDriver, ConsoleDriverConfig, CONFIG_LEN};
use rptun::devices::DeviceError;
use rptun::virtio::{id, DeviceTransport};

fn console_links() -> Vec<(&'static str, (DynTransport, DynDevice))> {
    links(id::CONSOLE, &[8, 8], &[0; CONFIG_LEN])
}

/// Checks `got` against the next bytes of `expected`, reporting the first
/// difference by stream position.
fn check(expected: &mut Stream, got: &[u8], pos: usize, what: &str) {
    for (i, &b) in got.iter().enumerate() {
        let e = expected.next_u8();
        assert_eq!(b, e, "{what}: byte {} differs", pos + i);
    }
}

const TEN_MIB: usize = 10 << 20;

#[test]
fn ten_mib_each_way_arrive_intact_between_two_threads() {
    for (name, (t, d)) in console_links() {
        let device = thread::spawn(move || {
            let mut dev = ConsoleDevice::new(d).unwrap();
            let mut tx = Stream::new(0xD0);
            let mut rx = Stream::new(0xD1);
            let mut chunk = tx.bytes(64 * 1024);
            let (mut sent, mut chunk_pos, mut received) = (0usize, 0usize, 0usize);
            let mut buf = vec![0u8; 64 * 1024];
            let mut wait = deadline(Duration::from_secs(120));
            while sent < TEN_MIB || received < TEN_MIB {
                let mut progress = false;
                if sent < TEN_MIB {
                    let want = (chunk.len() - chunk_pos).min(TEN_MIB - sent);
                    let n = dev.write(&chunk[chunk_pos..chunk_pos + want]).unwrap();
                    sent += n;
                    chunk_pos += n;
                    if chunk_pos == chunk.len() {
                        chunk = tx.bytes(64 * 1024);
                        chunk_pos = 0;
                    }
                    progress |= n > 0;
                }
                let n = dev.read(&mut buf).unwrap();
                check(&mut rx, &buf[..n], received, "driver -> device");
                received += n;
                progress |= n > 0;
                if !progress {
                    assert!(wait(), "device side stalled");
                }
            }
            assert!(received <= TEN_MIB);
            received
        });
        let mut drv = ConsoleDriver::new(t).unwrap();
        let mut tx = Stream::new(0xD1);
        let mut rx = Stream::new(0xD0);
        let mut chunk = tx.bytes(64 * 1024);
        let (mut sent, mut chunk_pos, mut received) = (0usize, 0usize, 0usize);
        let mut buf = vec![0u8; 64 * 1024];
        let mut wait = deadline(Duration::from_secs(120));
        while sent < TEN_MIB || received < TEN_MIB {
            let mut progress = false;
            if sent < TEN_MIB {
                let want = (chunk.len() - chunk_pos).min(TEN_MIB - sent);
                let n = drv.write(&chunk[chunk_pos..chunk_pos + want]).unwrap();
                sent += n;
                chunk_pos += n;
                if chunk_pos == chunk.len() {
                    chunk = tx.bytes(64 * 1024);
                    chunk_pos = 0;
                }
                progress |= n > 0;
            }
            let want = buf.len().min(TEN_MIB - received);
            let n = drv.read(&mut buf[..want]).unwrap();
            check(&mut rx, &buf[..n], received, "device -> driver");
            received += n;
            progress |= n > 0;
            if !progress {
                assert!(wait(), "{name}: driver side stalled");
            }
        }
        drv.flush(deadline(Duration::from_secs(60))).unwrap();
        assert_eq!(device.join().unwrap(), TEN_MIB, "{name}");
        assert_eq!(received, TEN_MIB, "{name}");
    }
}

#[test]
fn a_driver_that_stops_reading_stops_the_device_without_loss() {
    for (name, (t, d)) in console_links() {
        let mut drv = ConsoleDriver::new(t).unwrap();
        let mut dev = ConsoleDevice::new(d).unwrap();
        let data = Stream::new(42).bytes(100_000);
        let mut sent = dev.write(&data).unwrap();
        // Exactly what the driver posted: 8 receive buffers of 4 KiB.
        assert_eq!(sent, 8 * 4096, "{name}");
        assert_eq!(dev.write(&data[sent..]).unwrap(), 0, "{name}: stalled");
        assert!(!dev.poll().unwrap().writable, "{name}");
        assert_eq!(
            dev.write_all(&data[sent..], tries(5)),
            Err(DeviceError::Timeout),
            "{name}"
        );
        // Reading part of a buffer frees nothing; finishing it frees one.
        let mut got = vec![0u8; 100];
        assert_eq!(drv.read(&mut got).unwrap(), 100);
        assert_eq!(dev.write(&data[sent..]).unwrap(), 0, "{name}");
        let mut rest = vec![0u8; 4096 - 100];
        assert_eq!(drv.read(&mut rest).unwrap(), 4096 - 100);
        got.extend_from_slice(&rest);
        assert_eq!(drv.poll().unwrap().readable, 7 * 4096, "{name}");
        assert_eq!(dev.write(&data[sent..]).unwrap(), 4096, "{name}");
        sent += 4096;
        // A slow reader: 1000 bytes at a time, the writer fills what it can.
        let mut buf = [0u8; 1000];
        let mut stalls = 0;
        while got.len() < data.len() {
            let n = drv.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            let w = dev.write(&data[sent..]).unwrap();
            sent += w;
            stalls += usize::from(w == 0 && sent < data.len());
        }
        assert!(stalls > 0, "{name}: the writer had to wait for the reader");
        assert_eq!(got, data, "{name}: every byte, in order");
    }
}

#[test]
fn a_device_that_stops_reading_stalls_the_driver_without_loss() {
    for (name, (t, d)) in console_links() {
        let mut drv = ConsoleDriver::new(t).unwrap();
        let mut dev = ConsoleDevice::new(d).unwrap();
        let data = Stream::new(43).bytes(50_000);
        let mut sent = drv.write(&data).unwrap();
        assert_eq!(sent, 8 * 4096, "{name}: 8 transmit buffers of 4 KiB");
        assert_eq!(drv.write(&data[sent..]).unwrap(), 0, "{name}: would block");
        assert_eq!(drv.writable(), 0);
        assert_eq!(
            drv.write_all(&data[sent..], deadline(Duration::from_millis(20))),
            Err(DeviceError::Timeout),
            "{name}"
        );
        // The device reads part of the first buffer: it keeps it.
        let mut got = vec![0u8; 10];
        assert_eq!(dev.read(&mut got).unwrap(), 10);
        assert_eq!(drv.write(&data[sent..]).unwrap(), 0, "{name}");
        let mut rest = vec![0u8; 4096 - 10];
        assert_eq!(dev.read(&mut rest).unwrap(), 4096 - 10);
        got.extend_from_slice(&rest);
        assert_eq!(drv.write(&data[sent..]).unwrap(), 4096, "{name}");
        sent += 4096;
        let mut buf = [0u8; 777];
        while got.len() < data.len() {
            let n = dev.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            sent += drv.write(&data[sent..]).unwrap();
        }
        drv.flush(tries(2)).unwrap();
        assert_eq!(got, data, "{name}: every byte, in order");
    }
}

#[test]
fn a_slow_reader_thread_gets_every_byte() {
    for (name, (t, d)) in console_links() {
        const LEN: usize = 1 << 20;
        let writer = thread::spawn(move || {
            let mut dev = ConsoleDevice::new(d).unwrap();
            let data = Stream::new(77).bytes(LEN);
            dev.write_all(&data, deadline(Duration::from_secs(60)))
                .unwrap();
            // Stay attached until the reader is done.
            dev
        });
        let mut drv = ConsoleDriver::new(t).unwrap();
        let mut expected = Stream::new(77);
        let mut got = 0;
        let mut buf = [0u8; 3000];
        let mut wait = deadline(Duration::from_secs(60));
        while got < LEN {
            let n = drv.read(&mut buf).unwrap();
            check(&mut expected, &buf[..n], got, name);
            got += n;
            if n == 0 {
                assert!(wait(), "{name}: reader stalled");
            } else if got % 16 == 0 {
                thread::sleep(Duration::from_micros(200));
            }
        }
        writer.join().unwrap();
    }
}

#[test]
fn many_small_writes_keep_their_order() {
    for (name, (t, d)) in console_links() {
        let mut drv = ConsoleDriver::new(t).unwrap();
        let mut dev = ConsoleDevice::new(d).unwrap();
        let data = Stream::new(5).bytes(5000);
        let (mut at, mut n) = (0, 1);
        let (mut down, mut up) = (Vec::new(), Vec::new());
        let mut buf = [0u8; 64];
        while at < data.len() || down.len() < data.len() || up.len() < data.len() {
            if at < data.len() {
                let end = (at + n).min(data.len());
                let a = dev.write(&data[at..end]).unwrap();
                let b = drv.write(&data[at..at + a]).unwrap();
                assert_eq!(a, b, "{name}: both sides have buffers for small writes");
                at += a;
                n = n % 7 + 1;
            }
            let k = drv.read(&mut buf[..n * 3]).unwrap();
            down.extend_from_slice(&buf[..k]);
            let k = dev.read(&mut buf[..n * 5]).unwrap();
            up.extend_from_slice(&buf[..k]);
        }
        assert_eq!(down, data, "{name}: device -> driver");
        assert_eq!(up, data, "{name}: driver -> device");
    }
}

#[test]
fn a_device_vanishing_mid_transfer_is_reported_not_waited_for() {
    for (name, (t, d)) in console_links() {
        let (t, gone) = Vanishing::new(t);
        let mut drv = ConsoleDriver::new(t).unwrap();
        let mut dev = ConsoleDevice::new(d).unwrap();
        let data = vec![0x5a; 64 * 1024];
        let sent = drv.write(&data).unwrap();
        let mut buf = vec![0u8; 1000];
        assert_eq!(dev.read(&mut buf).unwrap(), 1000);
        gone.store(true, Ordering::SeqCst);
        // Would wait forever: only the liveness check can end these.
        assert_eq!(
            drv.write_all(&data[sent..], || true),
            Err(DeviceError::Gone),
            "{name}"
        );
        assert_eq!(
            drv.read_exact(&mut buf, || true),
            Err(DeviceError::Gone),
            "{name}"
        );
        assert_eq!(drv.flush(|| true), Err(DeviceError::Gone), "{name}");
    }
}

#[test]
fn a_device_thread_dying_mid_transfer_gives_a_timeout() {
    for (name, (t, d)) in console_links() {
        let mut drv = ConsoleDriver::new(t).unwrap();
        let data = Stream::new(6).bytes(200_000);
        // The device reads a little, then its thread ends (the transport
        // stays, as a crashed remote's shared memory does).
        let d = thread::spawn(move || {
            let mut dev = ConsoleDevice::new(d).unwrap();
            let mut buf = vec![0u8; 10_000];
            dev.read_exact(&mut buf, deadline(Duration::from_secs(30)))
                .unwrap();
            dev.into_transport()
        });
        let r = drv.write_all(&data, deadline(Duration::from_millis(300)));
        assert_eq!(r, Err(DeviceError::Timeout), "{name}");
        let _transport = d.join().unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(
            drv.read_exact(&mut buf, deadline(Duration::from_millis(20))),
            Err(DeviceError::Timeout),
            "{name}"
        );
    }
}

#[test]
fn the_device_sees_a_driver_reset_and_serves_the_next_driver() {
    for (name, (t, d)) in console_links() {
        let mut dev = ConsoleDevice::new(d).unwrap();
        assert_eq!(dev.write(b"early").unwrap(), 0, "{name}: no driver yet");
        let mut drv = ConsoleDriver::new(t).unwrap();
        assert_eq!(dev.write(b"hello").unwrap(), 5, "{name}");
        assert!(dev.is_attached());
        let mut buf = [0u8; 5];
        drv.read_exact(&mut buf, tries(1)).unwrap();
        assert_eq!(&buf, b"hello");
        drv.write_all(b"pending", tries(1)).unwrap();
        let t = drv.shutdown();
        // Mid-transfer: the device was writing when the driver went away.
        assert_eq!(
            dev.write_all(b"more", || true),
            Err(DeviceError::Reset),
            "{name}: a waiting writer learns at once"
        );
        assert_eq!(dev.write(b"more").unwrap(), 0, "{name}: reported once");
        let mut drv = ConsoleDriver::new(t).unwrap();
        assert_eq!(dev.write(b"again").unwrap(), 5, "{name}");
        drv.read_exact(&mut buf, tries(1)).unwrap();
        assert_eq!(&buf, b"again");
        // The old driver's unread transmit data is gone with it.
        drv.write_all(b"new", tries(1)).unwrap();
        let mut up = [0u8; 16];
        assert_eq!(dev.read(&mut up).unwrap(), 3, "{name}");
        assert_eq!(&up[..3], b"new");
    }
}

#[test]
fn a_device_sees_the_peer_gone_through_its_transport() {
    // The device side of a transport that lost the driver reports Gone.
    struct GoneDevice(DynDevice);
    impl DeviceTransport for GoneDevice {
        fn device_id(&self) -> u32 {
            self.0.device_id()
        }
        fn device_features(&self) -> Result<u64, rptun::virtio::VirtioError> {
            self.0.device_features()
        }
        fn driver_features(&self) -> Result<u64, rptun::virtio::VirtioError> {
            self.0.driver_features()
        }
        fn status(&self) -> Result<u8, rptun::virtio::VirtioError> {
            Err(rptun::virtio::VirtioError::Gone)
        }
        fn set_needs_reset(&mut self) -> Result<(), rptun::virtio::VirtioError> {
            self.0.set_needs_reset()
        }
        fn config_len(&self) -> usize {
            self.0.config_len()
        }
        fn read_config(&self, o: usize, b: &mut [u8]) -> Result<(), rptun::virtio::VirtioError> {
            self.0.read_config(o, b)
        }
        fn write_config(&mut self, o: usize, b: &[u8]) -> Result<(), rptun::virtio::VirtioError> {
            self.0.write_config(o, b)
        }
        fn num_queues(&self) -> u16 {
            self.0.num_queues()
        }
        fn queue(&self, q: u16) -> Result<rptun::virtio::QueueMem, rptun::virtio::VirtioError> {
            self.0.queue(q)
        }
        fn notify(&mut self, q: u16) -> Result<(), rptun::virtio::VirtioError> {
            self.0.notify(q)
        }
        fn region(&self) -> &rptun::shm::Region {
            self.0.region()
        }
    }
    for (name, (t, d)) in console_links() {
        let _drv = ConsoleDriver::new(t).unwrap();
        let mut dev = ConsoleDevice::new(GoneDevice(d)).unwrap();
        assert_eq!(
            dev.write_all(b"x", || true),
            Err(DeviceError::Gone),
            "{name}"
        );
        assert_eq!(dev.read(&mut [0u8; 4]), Err(DeviceError::Gone), "{name}");
    }
}

#[test]
fn small_configurations_and_wrong_devices() {
    let (t, _) = devices_common::mmio_link(id::ENTROPY, &[8], &[]);
    assert!(matches!(
        ConsoleDriver::new(t),
        Err(DeviceError::WrongDevice {
            expected: 3,
            found: 4
        })
    ));
    for (name, (t, d)) in console_links() {
        let cfg = ConsoleDriverConfig {
            queue_size: 2,
            rx_buffers: 1,
            tx_buffers: 2,
            buf_size: 16,
        };
        let mut drv = ConsoleDriver::<_, 8>::with_config(t, cfg).unwrap();
        // A vdev's rings are fixed by its table (8 entries here).
        let num = if name.starts_with("vdev") { 8 } else { 2 };
        assert_eq!(drv.receive_queue().num(), num, "{name}");
        let mut dev = ConsoleDevice::new(d).unwrap();
        assert_eq!(drv.write(&[1; 100]).unwrap(), 32, "{name}");
        assert_eq!(dev.write(&[2; 100]).unwrap(), 16, "{name}");
        assert_eq!(drv.poll().unwrap().readable, 16, "{name}");
    }
}

#[test]
fn a_driver_restart_the_device_did_not_see_is_noticed() {
    for (name, (t, d)) in console_links() {
        let mut drv = ConsoleDriver::new(t).unwrap();
        let mut dev = ConsoleDevice::new(d).unwrap();
        assert_eq!(dev.write(b"one").unwrap(), 3);
        let mut buf = [0u8; 3];
        drv.read_exact(&mut buf, tries(1)).unwrap();
        drv.write_all(b"x", tries(1)).unwrap();
        assert_eq!(dev.read(&mut buf).unwrap(), 1);
        // Reset and re-initialise while the device is not looking.
        let mut drv = ConsoleDriver::new(drv.shutdown()).unwrap();
        assert_eq!(dev.write(b"two"), Err(DeviceError::Reset), "{name}");
        assert_eq!(dev.write(b"two"), Ok(3), "{name}");
        drv.read_exact(&mut buf, tries(1)).unwrap();
        assert_eq!(&buf, b"two", "{name}");
        drv.write_all(b"up", tries(1)).unwrap();
        assert_eq!(dev.read(&mut buf).unwrap(), 2, "{name}");
        assert_eq!(&buf[..2], b"up", "{name}");
    }
}
