//! rpmsg virtio config space over arbitrary bytes, both layouts.
//!
//! On success the decoded fields must be exactly the bytes at their layout
//! offsets, the names valid (at most 7 bytes of UTF-8, no NUL), and encoding
//! must reproduce the input's fields (cpu-name bytes after the NUL are
//! zeroed) and parse back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rptun::wire::rpmsg_config::{
    ConfigError, ConfigLayout, CpuName, RpmsgConfig, CONFIG_LEN, CPUNAME_LEN,
};

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The field as a peer wrote it, with everything after the first NUL zeroed.
fn canonical_name(raw: &[u8]) -> [u8; CPUNAME_LEN] {
    let mut out = [0u8; CPUNAME_LEN];
    let end = raw.iter().position(|&b| b == 0).unwrap();
    out[..end].copy_from_slice(&raw[..end]);
    out
}

fn check_name(n: &CpuName, raw: &[u8]) {
    let s = n.as_str();
    assert!(s.len() < CPUNAME_LEN);
    assert!(!s.as_bytes().contains(&0));
    assert_eq!(n.raw(), &canonical_name(raw));
    assert_eq!(CpuName::new(s).unwrap(), *n);
    assert_eq!(format!("{n}"), s);
}

fn check(bytes: &[u8], layout: ConfigLayout) {
    let (host_at, remote_at) = match layout {
        ConfigLayout::Current => (24, 32),
        ConfigLayout::Legacy => (8, 16),
    };
    let cfg = match RpmsgConfig::parse(bytes, layout) {
        Ok(cfg) => cfg,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            match e {
                ConfigError::TooShort { len, need, .. } => {
                    assert_eq!(len, bytes.len());
                    assert_eq!(need, layout.min_len());
                    assert!(bytes.len() < layout.min_len());
                }
                ConfigError::CpuNameUnterminated { field } => {
                    let at = if field == "host_cpuname" {
                        host_at
                    } else {
                        remote_at
                    };
                    assert!(!bytes[at..at + CPUNAME_LEN].contains(&0));
                }
                ConfigError::CpuNameNotUtf8 { field } => {
                    let at = if field == "host_cpuname" {
                        host_at
                    } else {
                        remote_at
                    };
                    let raw = &bytes[at..at + CPUNAME_LEN];
                    let end = raw.iter().position(|&b| b == 0).unwrap();
                    assert!(core::str::from_utf8(&raw[..end]).is_err());
                }
                other => panic!("parse cannot fail with {other:?}"),
            }
            return;
        }
    };
    assert!(bytes.len() >= layout.min_len());
    assert_eq!(cfg.h2r_buf_size, u32_at(bytes, 0));
    assert_eq!(cfg.r2h_buf_size, u32_at(bytes, 4));
    match layout {
        ConfigLayout::Current => {
            assert_eq!(cfg.h2r_buf_addr, u64_at(bytes, 8));
            assert_eq!(cfg.r2h_buf_addr, u64_at(bytes, 16));
        }
        ConfigLayout::Legacy => assert_eq!((cfg.h2r_buf_addr, cfg.r2h_buf_addr), (0, 0)),
    }
    check_name(&cfg.host_cpuname, &bytes[host_at..host_at + CPUNAME_LEN]);
    check_name(
        &cfg.remote_cpuname,
        &bytes[remote_at..remote_at + CPUNAME_LEN],
    );

    // Encoding reproduces the fields and zeroes the reserved part.
    let out = cfg.to_bytes(layout).unwrap();
    let min = layout.min_len();
    assert_eq!(&out[..host_at], &bytes[..host_at]);
    assert_eq!(&out[host_at..host_at + CPUNAME_LEN], cfg.host_cpuname.raw());
    assert_eq!(
        &out[remote_at..remote_at + CPUNAME_LEN],
        cfg.remote_cpuname.raw()
    );
    assert!(out[min..].iter().all(|&b| b == 0));
    assert_eq!(RpmsgConfig::parse(&out, layout).unwrap(), cfg);

    // `write` into the input-sized buffer: the fields, then zeros up to 64
    // bytes, and nothing past 64 is touched.
    let mut buf = bytes.to_vec();
    let n = cfg.write(layout, &mut buf).unwrap();
    assert_eq!(n, bytes.len().min(CONFIG_LEN));
    assert_eq!(&buf[..n], &out[..n]);
    assert_eq!(&buf[n..], &bytes[n..]);

    // The other layout: a legacy config always re-encodes in the current
    // layout; a current one only in legacy if it has no addresses.
    let other = match layout {
        ConfigLayout::Current => ConfigLayout::Legacy,
        ConfigLayout::Legacy => ConfigLayout::Current,
    };
    match cfg.to_bytes(other) {
        Ok(o) => assert_eq!(RpmsgConfig::parse(&o, other).unwrap(), cfg),
        Err(e) => {
            assert_eq!(e, ConfigError::AddressesNeedCurrentLayout);
            assert!(cfg.h2r_buf_addr != 0 || cfg.r2h_buf_addr != 0);
        }
    }
}

fuzz_target!(|bytes: &[u8]| {
    check(bytes, ConfigLayout::Current);
    check(bytes, ConfigLayout::Legacy);
    // Building names from the input as text never panics and validates.
    if let Ok(s) = core::str::from_utf8(bytes) {
        match CpuName::new(s) {
            Ok(n) => assert_eq!(n.as_str(), s),
            Err(_) => assert!(s.len() >= CPUNAME_LEN || s.contains('\0')),
        }
    }
});
