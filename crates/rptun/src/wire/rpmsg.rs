//! rpmsg wire formats: the 16-byte message header and the 40-byte
//! name-service message (DESIGN.md §4).
//!
//! ```text
//! header (16 B, little-endian, packed)
//!   0  u32 src        sender's local address
//!   4  u32 dst        receiver's local address
//!   8  u32 reserved   opaque (OpenAMP reuses it locally): carried, never interpreted
//!  12  u16 len        payload length in bytes
//!  14  u16 flags
//! name-service message (40 B, payload of a message sent to address 0x35)
//!   0  char name[32]  NUL-terminated; bytes after the first NUL are ignored
//!  32  u32 addr       the announcing / binding endpoint's local address
//!  36  u32 flags      CREATE 0, DESTROY 1, CREATE_ACK 2 (tested as bits)
//! ```
//!
//! Every view here is a *checked* view over untrusted bytes: constructing one
//! validates the lengths that later accessors rely on, so accessors cannot
//! panic. Owned representations ([`RpmsgHeader`], [`NsMessage`]) are what the
//! bus works with; they parse from and emit to byte slices.
#![forbid(unsafe_code)]

use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of the rpmsg header in bytes.
pub const HEADER_LEN: usize = 16;
/// Size of a name-service message in bytes.
pub const NS_MESSAGE_LEN: usize = 40;
/// Size of a name field (name-service names, endpoint names) including the
/// terminating NUL.
pub const NAME_SIZE: usize = 32;
/// The name-service endpoint's address.
pub const NS_ADDR: u32 = 0x35;
/// "Any address": an unassigned local address or an unknown destination.
pub const ADDR_ANY: u32 = 0xFFFF_FFFF;
/// Addresses below this are reserved; dynamic local addresses start here.
pub const RESERVED_ADDRESSES: u32 = 1024;

/// Name-service flag value: a service was created (announce).
pub const NS_CREATE: u32 = 0;
/// Name-service flag bit: a service was destroyed. Linux tests only this bit.
pub const NS_DESTROY: u32 = 1;
/// Name-service flag bit (NuttX extension): the side that bound to an
/// announced name tells the announcer its address.
pub const NS_CREATE_ACK: u32 = 2;

/// Errors found while parsing rpmsg wire data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RpmsgWireError {
    /// Fewer bytes than the fixed part of the structure.
    #[error(
        "rpmsg data truncated: {need} bytes needed, only {got} present; the sender's \
         buffer or length is wrong"
    )]
    Truncated {
        /// Bytes the structure needs.
        need: usize,
        /// Bytes available.
        got: usize,
    },
    /// The header's `len` does not fit in the buffer it arrived in.
    #[error(
        "rpmsg header claims a {len}-byte payload but the buffer holds only {available} \
         payload bytes; the peer sent a corrupt header (message dropped)"
    )]
    BadLength {
        /// Payload length the header claims.
        len: usize,
        /// Payload bytes actually available after the header.
        available: usize,
    },
    /// A name-service message whose payload is not exactly 40 bytes.
    #[error(
        "name-service message of {len} bytes, expected exactly 40; the peer speaks a \
         different name-service format (message dropped)"
    )]
    NsLength {
        /// Payload length received.
        len: usize,
    },
    /// A name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
}

/// Why a name (endpoint, service or cpu name) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Longer than 31 bytes (the 32-byte field needs room for the NUL).
    #[error("name of {len} bytes is too long: at most 31 bytes fit a 32-byte rpmsg name field")]
    TooLong {
        /// Length of the refused name in bytes.
        len: usize,
    },
    /// Contains a NUL byte, which would truncate it on the wire.
    #[error("name contains a NUL byte, which would cut it short on the wire; remove it")]
    ContainsNul,
    /// A received 32-byte name field has no terminating NUL.
    #[error(
        "received name field has no NUL terminator within 32 bytes; the peer sent a \
         malformed name (message dropped)"
    )]
    NotTerminated,
    /// A received name is not valid UTF-8.
    #[error(
        "received name is not valid UTF-8; rpmsg names are ASCII in every known peer \
         (message dropped)"
    )]
    NotUtf8,
}

/// A validated rpmsg name: at most 31 bytes of UTF-8 without NUL.
///
/// Fixed-size and `Copy` (no allocation), so it works on microcontrollers.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RpmsgName {
    bytes: [u8; NAME_SIZE],
    len: u8,
}

impl RpmsgName {
    /// Longest name in bytes.
    pub const MAX_LEN: usize = NAME_SIZE - 1;

    /// The empty name (an endpoint that is never announced).
    pub const fn empty() -> RpmsgName {
        RpmsgName {
            bytes: [0; NAME_SIZE],
            len: 0,
        }
    }

    /// Validates a local name: at most 31 bytes and no NUL.
    pub fn new(name: &str) -> Result<RpmsgName, NameError> {
        let b = name.as_bytes();
        if b.len() > Self::MAX_LEN {
            return Err(NameError::TooLong { len: b.len() });
        }
        if b.contains(&0) {
            return Err(NameError::ContainsNul);
        }
        let mut bytes = [0u8; NAME_SIZE];
        bytes[..b.len()].copy_from_slice(b);
        Ok(RpmsgName {
            bytes,
            len: b.len() as u8,
        })
    }

    /// Parses a received 32-byte name field: the name ends at the first NUL
    /// (bytes after it are ignored, as OpenAMP peers leave garbage there); a
    /// field without NUL, or a name that is not UTF-8, is refused.
    pub fn from_field(field: &[u8; NAME_SIZE]) -> Result<RpmsgName, NameError> {
        let len = field
            .iter()
            .position(|&b| b == 0)
            .ok_or(NameError::NotTerminated)?;
        if core::str::from_utf8(&field[..len]).is_err() {
            return Err(NameError::NotUtf8);
        }
        let mut bytes = [0u8; NAME_SIZE];
        bytes[..len].copy_from_slice(&field[..len]);
        Ok(RpmsgName {
            bytes,
            len: len as u8,
        })
    }

    /// The 32-byte wire field: the name, then NUL padding.
    pub fn to_field(&self) -> [u8; NAME_SIZE] {
        // `bytes` is already zero past `len`.
        self.bytes
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        // Every constructor checked UTF-8; fall back to "" rather than panic.
        core::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// The name's bytes (without NUL).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// True for the empty name.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for RpmsgName {
    fn default() -> Self {
        RpmsgName::empty()
    }
}

impl core::fmt::Debug for RpmsgName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl core::fmt::Display for RpmsgName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for RpmsgName {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for RpmsgName {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

/// Byte layout of the rpmsg header.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct HeaderLayout {
    /// Sender's address.
    pub src: U32,
    /// Receiver's address.
    pub dst: U32,
    /// Opaque word.
    pub reserved: U32,
    /// Payload length.
    pub len: U16,
    /// Flags.
    pub flags: U16,
}

/// Byte layout of the name-service message.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
pub struct NsLayout {
    /// NUL-terminated name.
    pub name: [u8; NAME_SIZE],
    /// Endpoint address.
    pub addr: U32,
    /// CREATE 0 / DESTROY 1 / CREATE_ACK 2.
    pub flags: U32,
}

const _: () = assert!(core::mem::size_of::<HeaderLayout>() == HEADER_LEN);
const _: () = assert!(core::mem::size_of::<NsLayout>() == NS_MESSAGE_LEN);

/// A checked view of an rpmsg message (header + payload) in a byte buffer.
///
/// [`RpmsgPacket::new_checked`] guarantees that the buffer holds the header
/// and the `len` payload bytes it announces.
#[derive(Debug, Clone, Copy)]
pub struct RpmsgPacket<B> {
    buf: B,
}

impl<B: AsRef<[u8]>> RpmsgPacket<B> {
    /// Wraps a buffer without checking it; accessors on a short buffer
    /// return zeros / empty slices rather than panic.
    pub fn new_unchecked(buf: B) -> RpmsgPacket<B> {
        RpmsgPacket { buf }
    }

    /// Wraps a buffer after checking that it holds the header and the payload
    /// length the header announces.
    pub fn new_checked(buf: B) -> Result<RpmsgPacket<B>, RpmsgWireError> {
        let p = RpmsgPacket { buf };
        p.check_len()?;
        Ok(p)
    }

    /// Checks the header and the announced payload length against the buffer.
    pub fn check_len(&self) -> Result<(), RpmsgWireError> {
        let b = self.buf.as_ref();
        let hdr = RpmsgHeader::parse(b)?;
        hdr.check_fits(b.len()).map(|_| ())
    }

    fn layout(&self) -> HeaderLayout {
        HeaderLayout::read_from_prefix(self.buf.as_ref())
            .map(|(h, _)| h)
            .unwrap_or_else(|_| HeaderLayout::new_zeroed())
    }

    /// Sender's address.
    pub fn src(&self) -> u32 {
        self.layout().src.get()
    }
    /// Receiver's address.
    pub fn dst(&self) -> u32 {
        self.layout().dst.get()
    }
    /// The opaque `reserved` word.
    pub fn reserved(&self) -> u32 {
        self.layout().reserved.get()
    }
    /// Payload length from the header.
    pub fn len(&self) -> u16 {
        self.layout().len.get()
    }
    /// True when the header announces an empty payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Header flags.
    pub fn flags(&self) -> u16 {
        self.layout().flags.get()
    }
    /// The payload (exactly `len` bytes on a checked view; clamped to the
    /// buffer on an unchecked one).
    pub fn payload(&self) -> &[u8] {
        let b = self.buf.as_ref();
        let start = HEADER_LEN.min(b.len());
        let end = (HEADER_LEN + self.len() as usize).min(b.len());
        &b[start..end]
    }
    /// The wrapped buffer.
    pub fn into_inner(self) -> B {
        self.buf
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> RpmsgPacket<B> {
    fn layout_mut(&mut self) -> Option<&mut HeaderLayout> {
        HeaderLayout::mut_from_prefix(self.buf.as_mut())
            .ok()
            .map(|(h, _)| h)
    }
    /// Sets the sender's address (no-op on a buffer shorter than the header).
    pub fn set_src(&mut self, v: u32) {
        if let Some(h) = self.layout_mut() {
            h.src.set(v)
        }
    }
    /// Sets the receiver's address.
    pub fn set_dst(&mut self, v: u32) {
        if let Some(h) = self.layout_mut() {
            h.dst.set(v)
        }
    }
    /// Sets the opaque `reserved` word.
    pub fn set_reserved(&mut self, v: u32) {
        if let Some(h) = self.layout_mut() {
            h.reserved.set(v)
        }
    }
    /// Sets the payload length.
    pub fn set_len(&mut self, v: u16) {
        if let Some(h) = self.layout_mut() {
            h.len.set(v)
        }
    }
    /// Sets the flags.
    pub fn set_flags(&mut self, v: u16) {
        if let Some(h) = self.layout_mut() {
            h.flags.set(v)
        }
    }
    /// The payload, mutable (clamped to the buffer).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = self.len() as usize;
        let b = self.buf.as_mut();
        let start = HEADER_LEN.min(b.len());
        let end = (HEADER_LEN + len).min(b.len());
        &mut b[start..end]
    }
}

/// The rpmsg header, owned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RpmsgHeader {
    /// Sender's address.
    pub src: u32,
    /// Receiver's address.
    pub dst: u32,
    /// Opaque word: carried, never interpreted.
    pub reserved: u32,
    /// Payload length in bytes.
    pub len: u16,
    /// Flags.
    pub flags: u16,
}

impl RpmsgHeader {
    /// Parses the first 16 bytes of `bytes` (the payload is not checked; see
    /// [`RpmsgHeader::check_fits`]).
    pub fn parse(bytes: &[u8]) -> Result<RpmsgHeader, RpmsgWireError> {
        let (h, _) =
            HeaderLayout::read_from_prefix(bytes).map_err(|_| RpmsgWireError::Truncated {
                need: HEADER_LEN,
                got: bytes.len(),
            })?;
        Ok(RpmsgHeader {
            src: h.src.get(),
            dst: h.dst.get(),
            reserved: h.reserved.get(),
            len: h.len.get(),
            flags: h.flags.get(),
        })
    }

    /// Checks that a message with this header fits in `buffer_len` bytes
    /// (header included) and returns the payload length.
    pub fn check_fits(&self, buffer_len: usize) -> Result<usize, RpmsgWireError> {
        let available = buffer_len.saturating_sub(HEADER_LEN);
        if buffer_len < HEADER_LEN {
            return Err(RpmsgWireError::Truncated {
                need: HEADER_LEN,
                got: buffer_len,
            });
        }
        let len = self.len as usize;
        if len > available {
            return Err(RpmsgWireError::BadLength { len, available });
        }
        Ok(len)
    }

    /// The 16 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let h = HeaderLayout {
            src: U32::new(self.src),
            dst: U32::new(self.dst),
            reserved: U32::new(self.reserved),
            len: U16::new(self.len),
            flags: U16::new(self.flags),
        };
        let mut out = [0u8; HEADER_LEN];
        out.copy_from_slice(h.as_bytes());
        out
    }

    /// Writes the header into the first 16 bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), RpmsgWireError> {
        let got = buf.len();
        let dst = buf.get_mut(..HEADER_LEN).ok_or(RpmsgWireError::Truncated {
            need: HEADER_LEN,
            got,
        })?;
        dst.copy_from_slice(&self.to_bytes());
        Ok(())
    }
}

/// What a name-service message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsKind {
    /// A service was created at `addr` (announcement).
    Create,
    /// The service at `addr` is gone (flags bit 0, as Linux tests it).
    Destroy,
    /// The binder of an announced name is at `addr` (flags bit 1, NuttX).
    CreateAck,
}

impl NsKind {
    /// Classifies a flags word the way every peer does: bit 0 means destroy
    /// whatever else is set (Linux tests `flags & 1`), then bit 1 means
    /// create-ack, anything else is a create.
    pub fn from_flags(flags: u32) -> NsKind {
        if flags & NS_DESTROY != 0 {
            NsKind::Destroy
        } else if flags & NS_CREATE_ACK != 0 {
            NsKind::CreateAck
        } else {
            NsKind::Create
        }
    }

    /// The flags word to send.
    pub fn flags(self) -> u32 {
        match self {
            NsKind::Create => NS_CREATE,
            NsKind::Destroy => NS_DESTROY,
            NsKind::CreateAck => NS_CREATE_ACK,
        }
    }
}

/// A checked view of a name-service message.
#[derive(Debug, Clone, Copy)]
pub struct NsPacket<B> {
    buf: B,
}

impl<B: AsRef<[u8]>> NsPacket<B> {
    /// Wraps a payload after checking it is exactly 40 bytes.
    pub fn new_checked(buf: B) -> Result<NsPacket<B>, RpmsgWireError> {
        let len = buf.as_ref().len();
        if len != NS_MESSAGE_LEN {
            return Err(RpmsgWireError::NsLength { len });
        }
        Ok(NsPacket { buf })
    }

    fn layout(&self) -> NsLayout {
        NsLayout::read_from_prefix(self.buf.as_ref())
            .map(|(h, _)| h)
            .unwrap_or_else(|_| NsLayout::new_zeroed())
    }

    /// The raw 32-byte name field.
    pub fn name_field(&self) -> [u8; NAME_SIZE] {
        self.layout().name
    }
    /// The address field.
    pub fn addr(&self) -> u32 {
        self.layout().addr.get()
    }
    /// The flags field.
    pub fn flags(&self) -> u32 {
        self.layout().flags.get()
    }
}

/// A name-service message, owned and validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsMessage {
    /// The service name.
    pub name: RpmsgName,
    /// The endpoint address the message is about.
    pub addr: u32,
    /// The raw flags word (classify with [`NsMessage::kind`]).
    pub flags: u32,
}

impl NsMessage {
    /// Builds a message of the given kind.
    pub fn new(name: RpmsgName, addr: u32, kind: NsKind) -> NsMessage {
        NsMessage {
            name,
            addr,
            flags: kind.flags(),
        }
    }

    /// Parses and validates a received payload: exactly 40 bytes, name
    /// NUL-terminated UTF-8.
    pub fn parse(payload: &[u8]) -> Result<NsMessage, RpmsgWireError> {
        let p = NsPacket::new_checked(payload)?;
        Ok(NsMessage {
            name: RpmsgName::from_field(&p.name_field())?,
            addr: p.addr(),
            flags: p.flags(),
        })
    }

    /// What the message asks for.
    pub fn kind(&self) -> NsKind {
        NsKind::from_flags(self.flags)
    }

    /// The 40 payload bytes.
    pub fn to_bytes(&self) -> [u8; NS_MESSAGE_LEN] {
        let l = NsLayout {
            name: self.name.to_field(),
            addr: U32::new(self.addr),
            flags: U32::new(self.flags),
        };
        let mut out = [0u8; NS_MESSAGE_LEN];
        out.copy_from_slice(l.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// src 0x400, dst 0x35, reserved 0xdeadbeef, len 40, flags 0x0102,
    /// written out field by field in little-endian.
    const HDR: [u8; 16] = [
        0x00, 0x04, 0x00, 0x00, // src 0x00000400
        0x35, 0x00, 0x00, 0x00, // dst 0x00000035
        0xef, 0xbe, 0xad, 0xde, // reserved 0xdeadbeef
        0x28, 0x00, // len 40
        0x02, 0x01, // flags 0x0102
    ];

    #[test]
    fn header_parses_and_emits_hand_derived_bytes() {
        let h = RpmsgHeader::parse(&HDR).unwrap();
        assert_eq!(
            h,
            RpmsgHeader {
                src: 0x400,
                dst: 0x35,
                reserved: 0xdead_beef,
                len: 40,
                flags: 0x0102
            }
        );
        assert_eq!(h.to_bytes(), HDR);
        let mut buf = [0xffu8; 20];
        h.emit(&mut buf).unwrap();
        assert_eq!(&buf[..16], &HDR);
        assert_eq!(&buf[16..], &[0xff; 4], "emit writes only the header");
        assert!(h.emit(&mut [0u8; 15]).is_err());
    }

    #[test]
    fn packet_view_checks_announced_length() {
        let mut msg = [0u8; 16 + 40];
        msg[..16].copy_from_slice(&HDR);
        msg[16] = 0xaa;
        let p = RpmsgPacket::new_checked(&msg[..]).unwrap();
        assert_eq!(
            (p.src(), p.dst(), p.len(), p.flags()),
            (0x400, 0x35, 40, 0x0102)
        );
        assert_eq!(p.reserved(), 0xdead_beef);
        assert_eq!(p.payload().len(), 40);
        assert_eq!(p.payload()[0], 0xaa);
        // one byte short of the announced payload
        assert_eq!(
            RpmsgPacket::new_checked(&msg[..55]).unwrap_err(),
            RpmsgWireError::BadLength {
                len: 40,
                available: 39
            }
        );
        assert_eq!(
            RpmsgPacket::new_checked(&msg[..10]).unwrap_err(),
            RpmsgWireError::Truncated { need: 16, got: 10 }
        );
        // an unchecked view over a short buffer clamps instead of panicking
        let u = RpmsgPacket::new_unchecked(&msg[..20]);
        assert_eq!(u.payload().len(), 4);
        assert_eq!(RpmsgPacket::new_unchecked(&msg[..3]).len(), 0);
    }

    #[test]
    fn packet_setters_write_little_endian() {
        let mut buf = [0u8; 18];
        let mut p = RpmsgPacket::new_unchecked(&mut buf[..]);
        p.set_src(0x400);
        p.set_dst(0x35);
        p.set_reserved(0xdead_beef);
        p.set_len(2);
        p.set_flags(0x0102);
        p.payload_mut().copy_from_slice(&[7, 8]);
        let mut expect = HDR;
        expect[12..14].copy_from_slice(&[0x02, 0x00]); // len 2
        assert_eq!(&buf[..16], &expect);
        assert_eq!(&buf[16..], &[7, 8]);
    }

    #[test]
    fn check_fits_refuses_len_beyond_buffer() {
        let h = RpmsgHeader {
            len: 497,
            ..Default::default()
        };
        assert_eq!(
            h.check_fits(512),
            Err(RpmsgWireError::BadLength {
                len: 497,
                available: 496
            })
        );
        let h = RpmsgHeader {
            len: 496,
            ..Default::default()
        };
        assert_eq!(h.check_fits(512), Ok(496));
    }

    /// "rpmsg-ping", NUL, garbage, addr 0x401, flags CREATE_ACK.
    fn ns_bytes() -> [u8; 40] {
        let mut b = [0u8; 40];
        b[..10].copy_from_slice(b"rpmsg-ping");
        b[10] = 0;
        b[11..32].fill(0x5a); // garbage after the NUL is accepted
        b[32..36].copy_from_slice(&[0x01, 0x04, 0x00, 0x00]);
        b[36..40].copy_from_slice(&[0x02, 0x00, 0x00, 0x00]);
        b
    }

    #[test]
    fn ns_message_parses_hand_derived_bytes_with_garbage_after_nul() {
        let m = NsMessage::parse(&ns_bytes()).unwrap();
        assert_eq!(m.name, "rpmsg-ping");
        assert_eq!(m.addr, 0x401);
        assert_eq!(m.kind(), NsKind::CreateAck);
        // re-emitting zero-pads the name
        let mut expect = ns_bytes();
        expect[11..32].fill(0);
        assert_eq!(m.to_bytes(), expect);
    }

    #[test]
    fn ns_message_refuses_missing_nul_bad_utf8_and_wrong_length() {
        let mut b = ns_bytes();
        b[..32].fill(b'x');
        assert_eq!(
            NsMessage::parse(&b),
            Err(RpmsgWireError::Name(NameError::NotTerminated))
        );
        let mut b = ns_bytes();
        b[0] = 0xff;
        assert_eq!(
            NsMessage::parse(&b),
            Err(RpmsgWireError::Name(NameError::NotUtf8))
        );
        assert_eq!(
            NsMessage::parse(&ns_bytes()[..39]),
            Err(RpmsgWireError::NsLength { len: 39 })
        );
        let mut long = [0u8; 41];
        long[..40].copy_from_slice(&ns_bytes());
        assert!(NsMessage::parse(&long).is_err());
    }

    #[test]
    fn ns_flags_are_classified_like_linux_and_nuttx() {
        assert_eq!(NsKind::from_flags(0), NsKind::Create);
        assert_eq!(NsKind::from_flags(1), NsKind::Destroy);
        assert_eq!(NsKind::from_flags(2), NsKind::CreateAck);
        // Linux tests `flags & 1`: 3 is a destroy
        assert_eq!(NsKind::from_flags(3), NsKind::Destroy);
        assert_eq!(NsKind::from_flags(0x100), NsKind::Create);
        let m = NsMessage::new(RpmsgName::new("a").unwrap(), 1024, NsKind::Destroy);
        assert_eq!(&m.to_bytes()[32..], &[0x00, 0x04, 0, 0, 1, 0, 0, 0]);
        assert_eq!(m.to_bytes()[0..2], [b'a', 0]);
    }

    #[test]
    fn local_names_are_validated() {
        assert_eq!(RpmsgName::new(&"x".repeat(31)).unwrap().as_str().len(), 31);
        assert_eq!(
            RpmsgName::new(&"x".repeat(32)),
            Err(NameError::TooLong { len: 32 })
        );
        assert_eq!(RpmsgName::new("a\0b"), Err(NameError::ContainsNul));
        assert!(RpmsgName::new("").unwrap().is_empty());
        let mut field = [0u8; 32];
        field[..31].fill(b'y');
        assert_eq!(RpmsgName::from_field(&field).unwrap().as_bytes().len(), 31);
    }
}
