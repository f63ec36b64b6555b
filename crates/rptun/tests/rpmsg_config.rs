//! rpmsg virtio config space in both NuttX layouts, against hand-derived bytes.

use rptun::wire::rpmsg_config::*;

fn config() -> RpmsgConfig {
    RpmsgConfig {
        h2r_buf_size: 0x600,
        r2h_buf_size: 0x200,
        h2r_buf_addr: 0x0102_0304_0506_0708,
        r2h_buf_addr: 0x1000,
        host_cpuname: CpuName::new("server").unwrap(),
        remote_cpuname: CpuName::new("proxy").unwrap(),
    }
}

/// Current layout, written out from DESIGN.md §4.
fn current_bytes() -> [u8; 64] {
    let mut b = [0u8; 64];
    b[0..4].copy_from_slice(&[0x00, 0x06, 0x00, 0x00]);
    b[4..8].copy_from_slice(&[0x00, 0x02, 0x00, 0x00]);
    b[8..16].copy_from_slice(&[0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01]);
    b[16..24].copy_from_slice(&[0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]);
    b[24..32].copy_from_slice(b"server\0\0");
    b[32..40].copy_from_slice(b"proxy\0\0\0");
    b
}

/// Legacy layout: sizes, then names at @8 and @16, no addresses.
fn legacy_bytes() -> [u8; 64] {
    let mut b = [0u8; 64];
    b[0..4].copy_from_slice(&[0x00, 0x06, 0x00, 0x00]);
    b[4..8].copy_from_slice(&[0x00, 0x02, 0x00, 0x00]);
    b[8..16].copy_from_slice(b"server\0\0");
    b[16..24].copy_from_slice(b"proxy\0\0\0");
    b
}

#[test]
fn feature_bits() {
    assert_eq!(
        [
            VIRTIO_RPMSG_F_NS,
            VIRTIO_RPMSG_F_ACK,
            VIRTIO_RPMSG_F_BUFSZ,
            VIRTIO_RPMSG_F_CPUNAME,
            VIRTIO_RPMSG_F_BUFADDR
        ],
        [0, 1, 2, 3, 4]
    );
}

#[test]
fn current_layout_round_trips() {
    assert_eq!(
        config().to_bytes(ConfigLayout::Current),
        Ok(current_bytes())
    );
    assert_eq!(
        RpmsgConfig::parse(&current_bytes(), ConfigLayout::Current),
        Ok(config())
    );
}

#[test]
fn legacy_layout_round_trips() {
    let legacy = RpmsgConfig {
        h2r_buf_addr: 0,
        r2h_buf_addr: 0,
        ..config()
    };
    assert_eq!(legacy.to_bytes(ConfigLayout::Legacy), Ok(legacy_bytes()));
    assert_eq!(
        RpmsgConfig::parse(&legacy_bytes(), ConfigLayout::Legacy),
        Ok(legacy)
    );
}

#[test]
fn legacy_layout_cannot_carry_addresses() {
    assert_eq!(
        config().to_bytes(ConfigLayout::Legacy),
        Err(ConfigError::AddressesNeedCurrentLayout)
    );
}

#[test]
fn wrong_layout_is_caught_by_name_validation() {
    // Current bytes read as legacy: the "names" are the address bytes
    // 08 07 06 05 04 03 02 01, which have no NUL.
    assert_eq!(
        RpmsgConfig::parse(&current_bytes(), ConfigLayout::Legacy),
        Err(ConfigError::CpuNameUnterminated {
            field: "host_cpuname"
        })
    );
}

#[test]
fn unterminated_and_non_utf8_names_are_refused() {
    let mut b = current_bytes();
    b[32..40].copy_from_slice(b"12345678");
    assert_eq!(
        RpmsgConfig::parse(&b, ConfigLayout::Current),
        Err(ConfigError::CpuNameUnterminated {
            field: "remote_cpuname"
        })
    );
    b[32..40].copy_from_slice(b"\xff\xfe\0\0\0\0\0\0");
    assert_eq!(
        RpmsgConfig::parse(&b, ConfigLayout::Current),
        Err(ConfigError::CpuNameNotUtf8 {
            field: "remote_cpuname"
        })
    );
}

#[test]
fn seven_char_names_and_garbage_after_nul() {
    let mut b = current_bytes();
    b[24..32].copy_from_slice(b"1234567\0");
    b[32..40].copy_from_slice(b"ab\0zzzzz");
    let c = RpmsgConfig::parse(&b, ConfigLayout::Current).unwrap();
    assert_eq!(c.host_cpuname.as_str(), "1234567");
    assert_eq!(c.remote_cpuname.as_str(), "ab");
    // Garbage after the NUL is not re-emitted.
    assert_eq!(
        &c.to_bytes(ConfigLayout::Current).unwrap()[32..40],
        b"ab\0\0\0\0\0\0"
    );
}

#[test]
fn cpu_name_construction_limits() {
    assert_eq!(CpuName::new("1234567").unwrap().raw(), b"1234567\0");
    assert_eq!(
        CpuName::new("12345678"),
        Err(ConfigError::CpuNameTooLong { len: 8 })
    );
    assert_eq!(CpuName::new("a\0"), Err(ConfigError::CpuNameHasNul));
    assert_eq!(CpuName::default().as_str(), "");
}

#[test]
fn short_config_space() {
    assert_eq!(
        RpmsgConfig::parse(&current_bytes()[..39], ConfigLayout::Current),
        Err(ConfigError::TooShort {
            len: 39,
            need: 40,
            layout: ConfigLayout::Current
        })
    );
    // The fields alone are enough; reserved bytes are optional.
    assert_eq!(
        RpmsgConfig::parse(&legacy_bytes()[..24], ConfigLayout::Legacy).map(|c| c.r2h_buf_size),
        Ok(0x200)
    );
}

#[test]
fn write_into_config_space() {
    let mut space = [0xAAu8; 70];
    assert_eq!(config().write(ConfigLayout::Current, &mut space), Ok(64));
    assert_eq!(&space[..64], &current_bytes()[..]);
    assert_eq!(&space[64..], &[0xAA; 6], "wrote past the config space");

    let mut short = [0xAAu8; 30];
    assert_eq!(
        config().write(ConfigLayout::Current, &mut short),
        Err(ConfigError::TooShort {
            len: 30,
            need: 40,
            layout: ConfigLayout::Current
        })
    );
}
