//! The port header that starts every byte-stream port buffer, and its CRC.
//!
//! A port buffer is `u16 crc, u16 cmd, u16 avail, u16 len` (little-endian,
//! packed: [`PortHeader`]), then the 16-byte rpmsg header, then the payload.
//! `len` counts all three parts. Data frames of the UART port carry
//! `cmd = avail = 0`. The CRC is optional: CRC-16/ARC (a.k.a. CRC-16/IBM:
//! reflected polynomial 0x8005, initial value 0, no final xor) over the
//! bytes from `cmd` to the end of the frame (`len − 2` bytes); a sender
//! without CRC writes 0, and a receiver verifies only a non-zero CRC.
#![forbid(unsafe_code)]

use super::PortError;

/// Size of the port header in bytes.
pub const PORT_HEADER_LEN: usize = 8;
/// Size of the rpmsg header that follows the port header.
pub const RPMSG_HEADER_LEN: usize = 16;
/// Shortest valid data frame: port header plus rpmsg header, no payload.
pub const MIN_FRAME_LEN: usize = PORT_HEADER_LEN + RPMSG_HEADER_LEN;
/// Longest frame the 16-bit `len` field can describe.
pub const MAX_FRAME_LEN: usize = u16::MAX as usize;

/// Byte offset of `crc` in the port header.
const CRC_OFFSET: usize = 0;
/// Byte offset of the first CRC-covered byte (`cmd`).
const CRC_START: usize = 2;

/// CRC-16/ARC lookup table (reflected polynomial 0xA001), built at compile
/// time.
const CRC16_ARC_TABLE: [u16; 256] = build_crc16_arc_table();

const fn build_crc16_arc_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u16;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// Continues a CRC-16/ARC computation over `data` from a previous value
/// (start with 0).
pub fn crc16_arc_update(mut crc: u16, data: &[u8]) -> u16 {
    for &byte in data {
        crc = (crc >> 8) ^ CRC16_ARC_TABLE[usize::from((crc ^ u16::from(byte)) as u8)];
    }
    crc
}

/// CRC-16/ARC (CRC-16/IBM) of `data`, as NuttX's `crc16ibm` computes it.
pub fn crc16_arc(data: &[u8]) -> u16 {
    crc16_arc_update(0, data)
}

/// The CRC a port frame carries: CRC-16/ARC over `frame[2..]`, that is
/// from `cmd` to the end. `frame` must be exactly the `len` bytes of the
/// frame.
pub fn frame_crc(frame: &[u8]) -> u16 {
    crc16_arc(frame.get(CRC_START..).unwrap_or(&[]))
}

/// The port header, decoded (an owned copy, never a view into the stream
/// buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortHeader {
    /// CRC-16/ARC of the frame from `cmd` to the end, or 0 for "not
    /// checked".
    pub crc: u16,
    /// Driver command; 0 for UART data frames.
    pub cmd: u16,
    /// Peer's available RX buffers (SPI ports); 0 for UART data frames.
    pub avail: u16,
    /// Frame length: port header + rpmsg header + payload.
    pub len: u16,
}

impl PortHeader {
    /// Size of the encoded header in bytes.
    pub const LEN: usize = PORT_HEADER_LEN;

    /// Header of a UART data frame of `len` bytes in total (CRC not yet
    /// computed).
    pub const fn data(len: u16) -> Self {
        PortHeader {
            crc: 0,
            cmd: 0,
            avail: 0,
            len,
        }
    }

    /// Header of a data frame carrying `payload_len` bytes after the rpmsg
    /// header.
    pub fn for_payload(payload_len: usize) -> Result<Self, PortError> {
        let len = payload_len.saturating_add(MIN_FRAME_LEN);
        let len = u16::try_from(len).map_err(|_| PortError::TooLong {
            len,
            max: MAX_FRAME_LEN,
        })?;
        Ok(Self::data(len))
    }

    /// Decodes the 8 little-endian header bytes.
    pub fn from_bytes(bytes: [u8; PORT_HEADER_LEN]) -> Self {
        let word = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        PortHeader {
            crc: word(0),
            cmd: word(2),
            avail: word(4),
            len: word(6),
        }
    }

    /// Encodes the header as 8 little-endian bytes.
    pub fn to_bytes(&self) -> [u8; PORT_HEADER_LEN] {
        let mut out = [0u8; PORT_HEADER_LEN];
        out[0..2].copy_from_slice(&self.crc.to_le_bytes());
        out[2..4].copy_from_slice(&self.cmd.to_le_bytes());
        out[4..6].copy_from_slice(&self.avail.to_le_bytes());
        out[6..8].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// Reads the header at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, PortError> {
        let bytes: [u8; PORT_HEADER_LEN] = buf
            .get(..PORT_HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(PortError::TooShort {
                len: buf.len(),
                min: PORT_HEADER_LEN,
            })?;
        Ok(Self::from_bytes(bytes))
    }

    /// Writes the header at the start of `buf`.
    pub fn write_to(&self, buf: &mut [u8]) -> Result<(), PortError> {
        let len = buf.len();
        let dst = buf.get_mut(..PORT_HEADER_LEN).ok_or(PortError::TooShort {
            len,
            min: PORT_HEADER_LEN,
        })?;
        dst.copy_from_slice(&self.to_bytes());
        Ok(())
    }

    /// Payload bytes after the rpmsg header, if `len` is large enough to
    /// hold both headers.
    pub fn payload_len(&self) -> Option<usize> {
        usize::from(self.len).checked_sub(MIN_FRAME_LEN)
    }
}

/// Validates a received frame (exactly the bytes between START and END,
/// unescaped) as NuttX's receiver does, and returns its header.
///
/// The frame must hold both headers, its `len` must equal the bytes
/// received, and a non-zero CRC must match. `cmd` and `avail` are not
/// checked (NuttX does not either).
pub fn check_frame(frame: &[u8]) -> Result<PortHeader, PortError> {
    if frame.len() < MIN_FRAME_LEN {
        return Err(PortError::TooShort {
            len: frame.len(),
            min: MIN_FRAME_LEN,
        });
    }
    let hdr = PortHeader::parse(frame)?;
    if usize::from(hdr.len) != frame.len() {
        return Err(PortError::LenMismatch {
            header: hdr.len,
            actual: frame.len(),
        });
    }
    if hdr.crc != 0 {
        let computed = frame_crc(frame);
        if computed != hdr.crc {
            return Err(PortError::BadCrc {
                stored: hdr.crc,
                computed,
            });
        }
    }
    Ok(hdr)
}

/// Writes `crc` into the header at the start of `buf` (which must hold a
/// header).
pub(crate) fn store_crc(buf: &mut [u8], crc: u16) {
    if let Some(dst) = buf.get_mut(CRC_OFFSET..CRC_OFFSET + 2) {
        dst.copy_from_slice(&crc.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ARC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_ARC);

    #[test]
    fn crc16_arc_check_value() {
        // The catalog check value of CRC-16/ARC over "123456789".
        assert_eq!(crc16_arc(b"123456789"), 0xBB3D);
        assert_eq!(crc16_arc(&[]), 0);
        // One byte 0x01: the reflected division of 0x01 by 0xA001 is 0xC0C1.
        assert_eq!(crc16_arc(&[0x01]), 0xC0C1);
    }

    #[test]
    fn header_layout_is_little_endian_packed() {
        let hdr = PortHeader {
            crc: 0x1234,
            cmd: 0x5678,
            avail: 0x9abc,
            len: 0xdef0,
        };
        assert_eq!(
            hdr.to_bytes(),
            [0x34, 0x12, 0x78, 0x56, 0xbc, 0x9a, 0xf0, 0xde]
        );
        assert_eq!(PortHeader::from_bytes(hdr.to_bytes()), hdr);
        let mut buf = [0u8; 10];
        hdr.write_to(&mut buf).unwrap();
        assert_eq!(PortHeader::parse(&buf).unwrap(), hdr);
        assert_eq!(
            PortHeader::parse(&buf[..7]),
            Err(PortError::TooShort { len: 7, min: 8 })
        );
        assert!(hdr.write_to(&mut buf[..3]).is_err());
    }

    #[test]
    fn for_payload_counts_both_headers() {
        assert_eq!(PortHeader::for_payload(3).unwrap().len, 27);
        assert_eq!(PortHeader::for_payload(0).unwrap().payload_len(), Some(0));
        assert_eq!(PortHeader::data(10).payload_len(), None);
        assert_eq!(
            PortHeader::for_payload(65512),
            Err(PortError::TooLong {
                len: 65536,
                max: 65535
            })
        );
        assert!(PortHeader::for_payload(usize::MAX).is_err());
    }

    fn frame_with(payload: &[u8], crc: bool) -> std::vec::Vec<u8> {
        let mut f = std::vec![0u8; MIN_FRAME_LEN + payload.len()];
        PortHeader::for_payload(payload.len())
            .unwrap()
            .write_to(&mut f)
            .unwrap();
        f[MIN_FRAME_LEN..].copy_from_slice(payload);
        if crc {
            let c = frame_crc(&f);
            store_crc(&mut f, c);
        }
        f
    }

    #[test]
    fn check_frame_verifies_len_and_nonzero_crc() {
        let f = frame_with(b"abc", true);
        let hdr = check_frame(&f).unwrap();
        assert_eq!(hdr.len, 27);
        assert_eq!(hdr.crc, ARC.checksum(&f[2..]));
        assert_ne!(hdr.crc, 0);

        // A wrong CRC is rejected...
        let mut bad = f.clone();
        bad[MIN_FRAME_LEN] ^= 1;
        assert!(matches!(check_frame(&bad), Err(PortError::BadCrc { .. })));
        // ...but CRC 0 means "not checked".
        store_crc(&mut bad, 0);
        assert!(check_frame(&bad).is_ok());

        // len must equal the bytes received.
        assert_eq!(
            check_frame(&f[..26]),
            Err(PortError::LenMismatch {
                header: 27,
                actual: 26
            })
        );
        assert_eq!(
            check_frame(&f[..10]),
            Err(PortError::TooShort { len: 10, min: 24 })
        );
    }

    proptest! {
        #[test]
        #[cfg_attr(miri, ignore = "pure CRC arithmetic on slices, ~40 s under Miri; no shared memory")]
        fn crc_matches_crc_crate(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            prop_assert_eq!(crc16_arc(&data), ARC.checksum(&data));
            let (a, b) = data.split_at(data.len() / 3);
            prop_assert_eq!(crc16_arc_update(crc16_arc(a), b), ARC.checksum(&data));
        }

        #[test]
        #[cfg_attr(miri, ignore = "pure header/CRC logic on slices, ~25 s under Miri; no shared memory")]
        fn single_bit_flips_are_detected(payload in proptest::collection::vec(any::<u8>(), 0..200),
                                         bit in any::<prop::sample::Index>()) {
            let f = frame_with(&payload, true);
            let mut bad = f.clone();
            let bit = bit.index(f.len() * 8);
            bad[bit / 8] ^= 1 << (bit % 8);
            let stored = PortHeader::parse(&bad).unwrap().crc;
            // Flipping the CRC down to zero turns checking off; anything
            // else must be caught.
            prop_assume!(stored != 0);
            prop_assert!(check_frame(&bad).is_err());
        }
    }
}
