//! The UART framing codec of NuttX's `rpmsg_port_uart`.
//!
//! On the wire a frame is `START 0x7f`, the escaped bytes of one port
//! buffer, `END 0x70`. Inside a frame every byte in `0x70..=0x7f` is sent as
//! `ESC 0x7c` followed by `byte ^ 0x20` (so it becomes `0x50..=0x5f`).
//! The remaining bytes of that range are single-byte commands ([`Cmd`]),
//! sent unescaped. They may arrive between frames or in the middle of one
//! (NuttX's receive thread answers a STAYWAKE while its transmit thread is
//! halfway through a frame): the receiver acts on them and carries on with
//! the frame, except CONNREQ and CONNACK, which abandon a partial frame
//! because they start a new session.
//!
//! [`encode`], [`encode_into`] and [`EncodeIter`] produce frames;
//! [`Deframer`] takes them apart from a byte stream, dropping and counting
//! anything malformed.
#![forbid(unsafe_code)]

use super::header::{check_frame, frame_crc, store_crc, PortHeader, MIN_FRAME_LEN};
use super::PortError;

/// Frame start.
pub const START: u8 = 0x7f;
/// Frame end.
pub const END: u8 = 0x70;
/// Escape: the next byte is a frame byte xor [`ESC_MASK`].
pub const ESC: u8 = 0x7c;
/// What an escaped byte is xored with.
pub const ESC_MASK: u8 = 0x20;

/// Whether `byte` must be escaped inside a frame (`0x70..=0x7f`).
pub const fn needs_escape(byte: u8) -> bool {
    byte >= END && byte <= START
}

/// Single-byte link commands, sent unescaped outside the frame encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Cmd {
    /// Connection request: "I am (re)starting, reset the link".
    ConnReq = 0x7e,
    /// Connection acknowledge.
    ConnAck = 0x7d,
    /// The sender is suspending (the rpmsg RUNNING signal goes off).
    Suspend = 0x7b,
    /// The sender resumed (the rpmsg RUNNING signal comes back).
    Resume = 0x7a,
    /// Stay awake, phase 1: the sender is about to transmit.
    StayWake1 = 0x79,
    /// Acknowledge of [`Cmd::StayWake1`].
    StayWakeAck1 = 0x78,
    /// The sender is done transmitting; the receiver may sleep again.
    RelaxWake = 0x77,
    /// The sender is powering off or rebooting: the link is down.
    PowerOff = 0x76,
    /// Stay awake, phase 2.
    StayWake2 = 0x75,
    /// Acknowledge of [`Cmd::StayWake2`].
    StayWakeAck2 = 0x74,
}

impl Cmd {
    /// Every command, in byte order from high to low.
    pub const ALL: [Cmd; 10] = [
        Cmd::ConnReq,
        Cmd::ConnAck,
        Cmd::Suspend,
        Cmd::Resume,
        Cmd::StayWake1,
        Cmd::StayWakeAck1,
        Cmd::RelaxWake,
        Cmd::PowerOff,
        Cmd::StayWake2,
        Cmd::StayWakeAck2,
    ];

    /// The byte sent on the wire.
    pub const fn byte(self) -> u8 {
        self as u8
    }

    /// The command a received byte stands for, if any.
    pub const fn from_byte(byte: u8) -> Option<Cmd> {
        Some(match byte {
            0x7e => Cmd::ConnReq,
            0x7d => Cmd::ConnAck,
            0x7b => Cmd::Suspend,
            0x7a => Cmd::Resume,
            0x79 => Cmd::StayWake1,
            0x78 => Cmd::StayWakeAck1,
            0x77 => Cmd::RelaxWake,
            0x76 => Cmd::PowerOff,
            0x75 => Cmd::StayWake2,
            0x74 => Cmd::StayWakeAck2,
            _ => return None,
        })
    }

    /// Whether receiving this command abandons a frame in progress
    /// (CONNREQ and CONNACK start a new session).
    pub const fn aborts_frame(self) -> bool {
        matches!(self, Cmd::ConnReq | Cmd::ConnAck)
    }

    /// NuttX's name for the command, for logs and dumps.
    pub const fn name(self) -> &'static str {
        match self {
            Cmd::ConnReq => "CONNREQ",
            Cmd::ConnAck => "CONNACK",
            Cmd::Suspend => "SUSPEND",
            Cmd::Resume => "RESUME",
            Cmd::StayWake1 => "STAYWAKE1",
            Cmd::StayWakeAck1 => "STAYWAKEACK1",
            Cmd::RelaxWake => "RELAXWAKE",
            Cmd::PowerOff => "POWEROFF",
            Cmd::StayWake2 => "STAYWAKE2",
            Cmd::StayWakeAck2 => "STAYWAKEACK2",
        }
    }
}

/// Whether the sender protects data frames with a CRC.
///
/// NuttX decides this at build time (`CONFIG_RPMSG_PORT_UART_CRC`); a
/// receiver verifies any non-zero CRC either way, so the two sides need not
/// agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CrcMode {
    /// Send CRC 0 ("not checked").
    #[default]
    Off,
    /// Send the CRC-16/ARC of the frame.
    On,
}

/// Finishes a port buffer for sending as a UART data frame.
///
/// `buf` holds the port header (whose `len` the caller has set, e.g. from
/// [`PortHeader::for_payload`]), the rpmsg header and the payload. This
/// sets `cmd = avail = 0`, writes the CRC (or 0 with [`CrcMode::Off`]) and
/// returns `len`: encode `&buf[..len]`.
pub fn seal_data_frame(buf: &mut [u8], crc: CrcMode) -> Result<usize, PortError> {
    let hdr = PortHeader::parse(buf)?;
    let len = usize::from(hdr.len);
    if len < MIN_FRAME_LEN {
        return Err(PortError::TooShort {
            len,
            min: MIN_FRAME_LEN,
        });
    }
    if len > buf.len() {
        return Err(PortError::LenMismatch {
            header: hdr.len,
            actual: buf.len(),
        });
    }
    PortHeader::data(hdr.len).write_to(buf)?;
    if crc == CrcMode::On {
        let value = frame_crc(&buf[..len]);
        store_crc(buf, value);
    }
    Ok(len)
}

/// Bytes on the wire for `frame`, START and END included.
pub fn encoded_len(frame: &[u8]) -> usize {
    2 + frame.len() + frame.iter().filter(|&&b| needs_escape(b)).count()
}

/// Wire bytes needed for a frame of `len` bytes in the worst case (every
/// byte escaped).
pub const fn max_encoded_len(len: usize) -> usize {
    len.saturating_mul(2).saturating_add(2)
}

/// The wire bytes of one frame, produced one at a time (for a transmit
/// interrupt or a small staging buffer).
#[derive(Debug, Clone)]
pub struct EncodeIter<'a> {
    frame: &'a [u8],
    /// Next frame byte to emit.
    pos: usize,
    /// Second half of an escape sequence still to emit.
    pending: Option<u8>,
    /// START not emitted yet.
    before_start: bool,
    /// END emitted.
    done: bool,
    /// Wire bytes left, for an exact `size_hint`.
    remaining: usize,
}

impl<'a> EncodeIter<'a> {
    /// Starts encoding `frame` (the `len` bytes of a sealed port buffer).
    pub fn new(frame: &'a [u8]) -> Self {
        EncodeIter {
            frame,
            pos: 0,
            pending: None,
            before_start: true,
            done: false,
            remaining: encoded_len(frame),
        }
    }
}

impl Iterator for EncodeIter<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        if self.done {
            return None;
        }
        let out = if self.before_start {
            self.before_start = false;
            START
        } else if let Some(b) = self.pending.take() {
            b
        } else if let Some(&b) = self.frame.get(self.pos) {
            self.pos += 1;
            if needs_escape(b) {
                self.pending = Some(b ^ ESC_MASK);
                ESC
            } else {
                b
            }
        } else {
            self.done = true;
            END
        };
        self.remaining -= 1;
        Some(out)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for EncodeIter<'_> {}

/// Encodes `frame` as wire bytes, handing each to `out`.
pub fn encode(frame: &[u8], out: &mut impl FnMut(u8)) {
    EncodeIter::new(frame).for_each(out);
}

/// Encodes `frame` into `out` and returns the number of wire bytes.
///
/// `out` needs [`encoded_len`] bytes, at most [`max_encoded_len`]; nothing
/// is written when it is too small.
pub fn encode_into(frame: &[u8], out: &mut [u8]) -> Result<usize, PortError> {
    let need = encoded_len(frame);
    if out.len() < need {
        return Err(PortError::OutputTooSmall {
            need,
            have: out.len(),
        });
    }
    for (dst, b) in out.iter_mut().zip(EncodeIter::new(frame)) {
        *dst = b;
    }
    Ok(need)
}

/// Counters of a [`Deframer`]: what it delivered and what it dropped.
///
/// Counters wrap around on overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeframerStats {
    /// Frames delivered (well formed, `len` right, CRC right or 0).
    pub frames_ok: u32,
    /// Known commands delivered.
    pub commands: u32,
    /// Bytes of the command range (`0x71..=0x73`) that mean nothing; skipped.
    pub unknown_commands: u32,
    /// Bytes outside any frame that were neither START nor a command.
    pub garbage_bytes: u32,
    /// Frames cut short by a new START, CONNREQ or CONNACK.
    pub truncated: u32,
    /// Frames longer than the deframer's buffer.
    pub oversized: u32,
    /// Frames with an escape not followed by `0x50..=0x5f`.
    pub bad_escape: u32,
    /// Frames shorter than both headers, or whose `len` disagrees with the
    /// bytes received.
    pub bad_len: u32,
    /// Frames whose non-zero CRC did not match.
    pub bad_crc: u32,
}

impl DeframerStats {
    /// Frames that were started on the wire but not delivered.
    pub fn frames_dropped(&self) -> u32 {
        self.truncated
            .wrapping_add(self.oversized)
            .wrapping_add(self.bad_escape)
            .wrapping_add(self.bad_len)
            .wrapping_add(self.bad_crc)
    }
}

/// What the deframer found in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete, validated frame: the port buffer (port header, rpmsg
    /// header, payload), `len` bytes exactly. It lives in the deframer's
    /// buffer until the next byte is fed.
    Frame(&'a [u8]),
    /// A single-byte command.
    Command(Cmd),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxState {
    /// Between frames: waiting for START.
    Idle,
    /// Inside a frame.
    Body,
    /// Inside a frame, after ESC.
    Escape,
    /// Inside a frame already dropped (oversized or bad escape): skipping to
    /// END or START.
    Discard,
}

/// Outcome of one byte, without borrowing the buffer.
enum Step {
    Nothing,
    Frame(usize),
    Command(Cmd),
}

/// Streaming frame decoder with a fixed `MAX`-byte frame buffer (2048 for
/// NuttX's default port buffers).
///
/// Feed it bytes in any chunking; it yields [`Event`]s. Malformed input is
/// dropped and counted in [`DeframerStats`]; the decoder never allocates,
/// never panics and resynchronises at the next START.
///
/// `MAX` must hold at least the 24 bytes of the two headers:
///
/// ```compile_fail
/// let too_small = rptun::rpmsg::port::Deframer::<8>::new();
/// ```
#[derive(Debug, Clone)]
pub struct Deframer<const MAX: usize> {
    buf: [u8; MAX],
    len: usize,
    state: RxState,
    stats: DeframerStats,
}

impl<const MAX: usize> Default for Deframer<MAX> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const MAX: usize> Deframer<MAX> {
    const BIG_ENOUGH: () = assert!(
        MAX >= MIN_FRAME_LEN,
        "a Deframer buffer must hold at least the 24 bytes of port and rpmsg headers"
    );

    /// An empty deframer, waiting for START.
    pub const fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::BIG_ENOUGH;
        Deframer {
            buf: [0; MAX],
            len: 0,
            state: RxState::Idle,
            stats: DeframerStats {
                frames_ok: 0,
                commands: 0,
                unknown_commands: 0,
                garbage_bytes: 0,
                truncated: 0,
                oversized: 0,
                bad_escape: 0,
                bad_len: 0,
                bad_crc: 0,
            },
        }
    }

    /// What was delivered and dropped so far.
    pub fn stats(&self) -> &DeframerStats {
        &self.stats
    }

    /// Zeroes the counters.
    pub fn reset_stats(&mut self) {
        self.stats = DeframerStats::default();
    }

    /// Forgets a partial frame (not counted) and waits for START.
    pub fn reset(&mut self) {
        self.state = RxState::Idle;
        self.len = 0;
    }

    /// Whether a frame is in progress.
    pub fn in_frame(&self) -> bool {
        self.state != RxState::Idle
    }

    /// Feeds one byte.
    pub fn push(&mut self, byte: u8) -> Option<Event<'_>> {
        match self.step(byte) {
            Step::Nothing => None,
            Step::Frame(n) => Some(Event::Frame(&self.buf[..n])),
            Step::Command(c) => Some(Event::Command(c)),
        }
    }

    /// Consumes bytes from the front of `input` up to and including the
    /// next event, and returns it; `None` once `input` is empty.
    ///
    /// ```
    /// # use rptun::rpmsg::port::{Deframer, Event};
    /// let mut deframer = Deframer::<2048>::new();
    /// let mut input: &[u8] = &[0x7e, 0x00, 0x7d];
    /// while let Some(event) = deframer.next_event(&mut input) {
    ///     if let Event::Command(cmd) = event {
    ///         println!("{}", cmd.name());
    ///     }
    /// }
    /// assert_eq!(deframer.stats().garbage_bytes, 1);
    /// ```
    pub fn next_event<'s>(&'s mut self, input: &mut &[u8]) -> Option<Event<'s>> {
        while let Some((&byte, rest)) = input.split_first() {
            *input = rest;
            match self.step(byte) {
                Step::Nothing => {}
                Step::Frame(n) => return Some(Event::Frame(&self.buf[..n])),
                Step::Command(c) => return Some(Event::Command(c)),
            }
        }
        None
    }

    /// Feeds all of `input`, handing every event to `on_event`.
    pub fn feed(&mut self, mut input: &[u8], mut on_event: impl FnMut(Event<'_>)) {
        while let Some(event) = self.next_event(&mut input) {
            on_event(event);
        }
    }

    fn bump(counter: &mut u32) {
        *counter = counter.wrapping_add(1);
    }

    /// Starts a new frame (after START).
    fn begin(&mut self) {
        self.len = 0;
        self.state = RxState::Body;
    }

    /// Appends a frame byte, or drops the frame when it outgrows the buffer.
    fn store(&mut self, byte: u8) {
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                *slot = byte;
                self.len += 1;
                self.state = RxState::Body;
            }
            None => {
                Self::bump(&mut self.stats.oversized);
                self.state = RxState::Discard;
            }
        }
    }

    /// Validates the frame just ended by END.
    fn finish(&mut self) -> Step {
        self.state = RxState::Idle;
        let n = self.len;
        self.len = 0;
        match check_frame(&self.buf[..n]) {
            Ok(_) => {
                Self::bump(&mut self.stats.frames_ok);
                Step::Frame(n)
            }
            Err(PortError::BadCrc { .. }) => {
                Self::bump(&mut self.stats.bad_crc);
                Step::Nothing
            }
            Err(_) => {
                Self::bump(&mut self.stats.bad_len);
                Step::Nothing
            }
        }
    }

    fn step(&mut self, byte: u8) -> Step {
        if let Some(cmd) = Cmd::from_byte(byte) {
            Self::bump(&mut self.stats.commands);
            if cmd.aborts_frame() {
                if matches!(self.state, RxState::Body | RxState::Escape) {
                    Self::bump(&mut self.stats.truncated);
                }
                self.reset();
            }
            return Step::Command(cmd);
        }
        if needs_escape(byte) && !matches!(byte, START | END | ESC) {
            // 0x71..=0x73: in the command range but unassigned. NuttX skips
            // them wherever they appear; so do we.
            Self::bump(&mut self.stats.unknown_commands);
            return Step::Nothing;
        }
        match self.state {
            RxState::Idle => {
                if byte == START {
                    self.begin();
                } else {
                    Self::bump(&mut self.stats.garbage_bytes);
                }
            }
            RxState::Body => match byte {
                START => {
                    Self::bump(&mut self.stats.truncated);
                    self.begin();
                }
                END => return self.finish(),
                ESC => self.state = RxState::Escape,
                _ => self.store(byte),
            },
            RxState::Escape => {
                if needs_escape(byte ^ ESC_MASK) {
                    self.store(byte ^ ESC_MASK);
                } else {
                    Self::bump(&mut self.stats.bad_escape);
                    match byte {
                        START => self.begin(),
                        END => self.reset(),
                        _ => self.state = RxState::Discard,
                    }
                }
            }
            RxState::Discard => match byte {
                START => self.begin(),
                END => self.reset(),
                _ => {}
            },
        }
        Step::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::super::header::{crc16_arc, PORT_HEADER_LEN};
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    const ARC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_ARC);

    /// A sealed data buffer: port header, rpmsg header (src, dst, len set),
    /// payload.
    fn data_frame(src: u32, dst: u32, payload: &[u8], crc: CrcMode) -> Vec<u8> {
        let mut buf = std::vec![0u8; MIN_FRAME_LEN + payload.len()];
        PortHeader::for_payload(payload.len())
            .unwrap()
            .write_to(&mut buf)
            .unwrap();
        buf[8..12].copy_from_slice(&src.to_le_bytes());
        buf[12..16].copy_from_slice(&dst.to_le_bytes());
        buf[20..22].copy_from_slice(&(payload.len() as u16).to_le_bytes());
        buf[MIN_FRAME_LEN..].copy_from_slice(payload);
        let n = seal_data_frame(&mut buf, crc).unwrap();
        assert_eq!(n, buf.len());
        buf
    }

    fn wire(frame: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(frame, &mut |b| out.push(b));
        out
    }

    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Owned {
        Frame(Vec<u8>),
        Command(Cmd),
    }

    fn decode<const MAX: usize>(d: &mut Deframer<MAX>, bytes: &[u8]) -> Vec<Owned> {
        let mut out = Vec::new();
        d.feed(bytes, |e| {
            out.push(match e {
                Event::Frame(f) => Owned::Frame(f.to_vec()),
                Event::Command(c) => Owned::Command(c),
            })
        });
        out
    }

    fn frames(events: &[Owned]) -> Vec<Vec<u8>> {
        events
            .iter()
            .filter_map(|e| match e {
                Owned::Frame(f) => Some(f.clone()),
                Owned::Command(_) => None,
            })
            .collect()
    }

    /// The hand-derived vector: 8-byte port header + 16-byte rpmsg header +
    /// 3 payload bytes 0x70, 0x7c, 0x7f, CRC off.
    const HAND_BUF: [u8; 27] = [
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1b, 0x00, // crc, cmd, avail, len=27
        0x00, 0x04, 0x00, 0x00, // src 0x400
        0x35, 0x00, 0x00, 0x00, // dst 0x35
        0x00, 0x00, 0x00, 0x00, // reserved
        0x03, 0x00, 0x00, 0x00, // len 3, flags 0
        0x70, 0x7c, 0x7f, // payload
    ];
    const HAND_WIRE: [u8; 32] = [
        0x7f, // START
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1b, 0x00, //
        0x00, 0x04, 0x00, 0x00, 0x35, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, //
        0x7c, 0x50, // 0x70 escaped
        0x7c, 0x5c, // 0x7c escaped
        0x7c, 0x5f, // 0x7f escaped
        0x70, // END
    ];

    #[test]
    fn hand_vector_encodes_byte_exact() {
        let buf = data_frame(0x400, 0x35, &[0x70, 0x7c, 0x7f], CrcMode::Off);
        assert_eq!(buf, HAND_BUF);
        assert_eq!(wire(&buf), HAND_WIRE);
        assert_eq!(encoded_len(&buf), HAND_WIRE.len());
        assert_eq!(EncodeIter::new(&buf).len(), HAND_WIRE.len());

        let mut out = [0u8; 40];
        assert_eq!(encode_into(&buf, &mut out), Ok(32));
        assert_eq!(out[..32], HAND_WIRE);
        let mut small = [0u8; 31];
        assert_eq!(
            encode_into(&buf, &mut small),
            Err(PortError::OutputTooSmall { need: 32, have: 31 })
        );
        assert_eq!(small, [0u8; 31], "nothing written when too small");

        let mut d = Deframer::<64>::new();
        assert_eq!(
            decode(&mut d, &HAND_WIRE),
            [Owned::Frame(HAND_BUF.to_vec())]
        );
        assert_eq!(d.stats().frames_ok, 1);
        assert_eq!(d.stats().frames_dropped(), 0);
    }

    #[test]
    fn hand_vector_with_crc() {
        let buf = data_frame(0x400, 0x35, &[0x70, 0x7c, 0x7f], CrcMode::On);
        let crc = ARC.checksum(&HAND_BUF[2..]);
        assert_eq!(crc, crc16_arc(&HAND_BUF[2..]));
        assert_eq!(buf[..2], crc.to_le_bytes());
        assert_eq!(buf[2..], HAND_BUF[2..]);
        // The CRC is 0x374f for this buffer (cross-checked above); neither
        // byte needs escaping, so the wire only differs in bytes 1..=2.
        assert_eq!(crc, 0x374f);
        let mut expect = HAND_WIRE;
        expect[1] = 0x4f;
        expect[2] = 0x37;
        assert_eq!(wire(&buf), expect);
        let mut d = Deframer::<64>::new();
        assert_eq!(decode(&mut d, &expect), [Owned::Frame(buf)]);
    }

    #[test]
    fn crc_bytes_in_the_escape_range_are_escaped() {
        // Search a payload whose CRC has a byte in 0x70..=0x7f and check
        // that the header itself is escaped and still round-trips.
        let (buf, crc) = (0u8..=255)
            .map(|p| {
                let buf = data_frame(1, 2, &[p], CrcMode::On);
                let crc = u16::from_le_bytes([buf[0], buf[1]]);
                (buf, crc)
            })
            .find(|(_, crc)| crc.to_le_bytes().iter().any(|&b| needs_escape(b)))
            .unwrap();
        assert_eq!(crc, ARC.checksum(&buf[2..]));
        let w = wire(&buf);
        assert!(w.len() > buf.len() + 2);
        let mut d = Deframer::<64>::new();
        assert_eq!(decode(&mut d, &w), [Owned::Frame(buf)]);
    }

    #[test]
    fn seal_forces_data_frame_fields() {
        let mut buf = [0xAAu8; 40];
        PortHeader {
            crc: 0x1111,
            cmd: 5,
            avail: 6,
            len: 30,
        }
        .write_to(&mut buf)
        .unwrap();
        assert_eq!(seal_data_frame(&mut buf, CrcMode::Off), Ok(30));
        assert_eq!(PortHeader::parse(&buf).unwrap(), PortHeader::data(30));
        assert_eq!(seal_data_frame(&mut buf, CrcMode::On), Ok(30));
        let hdr = PortHeader::parse(&buf).unwrap();
        assert_eq!(hdr.crc, ARC.checksum(&buf[2..30]));
        assert_eq!(buf[30..], [0xAA; 10], "bytes past len untouched");

        PortHeader::data(41).write_to(&mut buf).unwrap();
        assert_eq!(
            seal_data_frame(&mut buf, CrcMode::Off),
            Err(PortError::LenMismatch {
                header: 41,
                actual: 40
            })
        );
        PortHeader::data(23).write_to(&mut buf).unwrap();
        assert_eq!(
            seal_data_frame(&mut buf, CrcMode::Off),
            Err(PortError::TooShort { len: 23, min: 24 })
        );
        assert!(seal_data_frame(&mut buf[..5], CrcMode::Off).is_err());
    }

    #[test]
    fn command_bytes_round_trip() {
        for cmd in Cmd::ALL {
            assert_eq!(Cmd::from_byte(cmd.byte()), Some(cmd));
            assert!(needs_escape(cmd.byte()));
            assert!(![START, END, ESC].contains(&cmd.byte()));
        }
        assert_eq!(Cmd::ConnReq.byte(), 0x7e);
        assert_eq!(Cmd::StayWakeAck2.byte(), 0x74);
        for b in [0x00, 0x6f, 0x70, 0x71, 0x72, 0x73, 0x7c, 0x7f, 0x80, 0xff] {
            assert_eq!(Cmd::from_byte(b), None);
        }
    }

    #[test]
    fn commands_between_and_inside_frames() {
        let f = data_frame(1, 2, b"hello", CrcMode::On);
        let w = wire(&f);
        let mut stream = std::vec![0x7e, 0x7d];
        stream.extend_from_slice(&w);
        stream.push(0x79);
        // A STAYWAKE1 and a RELAXWAKE in the middle of a frame, the second
        // one right after an ESC: both are acted on and the frame survives.
        let mut w2 = wire(&data_frame(1, 2, &[0x71, 0x7f], CrcMode::Off));
        let esc_at = w2.iter().position(|&b| b == ESC).unwrap();
        w2.insert(esc_at + 1, 0x77);
        w2.insert(10, 0x79);
        stream.extend_from_slice(&w2);
        stream.extend_from_slice(&[0x76, 0x75, 0x74, 0x78, 0x7b, 0x7a]);
        let mut d = Deframer::<64>::new();
        let ev = decode(&mut d, &stream);
        use Cmd::*;
        assert_eq!(
            ev,
            [
                Owned::Command(ConnReq),
                Owned::Command(ConnAck),
                Owned::Frame(f),
                Owned::Command(StayWake1),
                Owned::Command(StayWake1),
                Owned::Command(RelaxWake),
                Owned::Frame(data_frame(1, 2, &[0x71, 0x7f], CrcMode::Off)),
                Owned::Command(PowerOff),
                Owned::Command(StayWake2),
                Owned::Command(StayWakeAck2),
                Owned::Command(StayWakeAck1),
                Owned::Command(Suspend),
                Owned::Command(Resume),
            ]
        );
        assert_eq!(d.stats().commands, 11);
        assert_eq!(d.stats().frames_dropped(), 0);
        assert_eq!(d.stats().garbage_bytes, 0);
    }

    #[test]
    fn connreq_inside_a_frame_abandons_it() {
        let f = data_frame(1, 2, b"abcdef", CrcMode::Off);
        let w = wire(&f);
        let mut stream = w[..12].to_vec();
        stream.push(Cmd::ConnReq.byte());
        // The rest of the old frame is garbage now, up to its END.
        stream.extend_from_slice(&w[12..]);
        stream.extend_from_slice(&w);
        let mut d = Deframer::<64>::new();
        let ev = decode(&mut d, &stream);
        assert_eq!(ev, [Owned::Command(Cmd::ConnReq), Owned::Frame(f)]);
        assert_eq!(d.stats().truncated, 1);
        // Bytes 12.. of the old frame, END included, are garbage.
        assert_eq!(d.stats().garbage_bytes as usize, w.len() - 12);
    }

    #[test]
    fn unknown_command_bytes_are_skipped_everywhere() {
        let f = data_frame(1, 2, b"xyz", CrcMode::On);
        let w = wire(&f);
        let mut stream = std::vec![0x71, 0x72];
        stream.extend_from_slice(&w[..5]);
        stream.push(0x73);
        stream.extend_from_slice(&w[5..]);
        let mut d = Deframer::<64>::new();
        assert_eq!(decode(&mut d, &stream), [Owned::Frame(f)]);
        assert_eq!(d.stats().unknown_commands, 3);
        assert_eq!(d.stats().garbage_bytes, 0);
    }

    #[test]
    fn truncated_frame_is_dropped_and_the_next_decoded() {
        let a = data_frame(1, 2, b"first frame", CrcMode::Off);
        let b = data_frame(3, 4, b"second", CrcMode::Off);
        let wa = wire(&a);
        let mut stream = wa[..wa.len() / 2].to_vec();
        stream.extend_from_slice(&wire(&b));
        let mut d = Deframer::<64>::new();
        assert_eq!(decode(&mut d, &stream), [Owned::Frame(b)]);
        assert_eq!(d.stats().truncated, 1);
        assert_eq!(d.stats().frames_ok, 1);
    }

    #[test]
    fn missing_start_means_garbage_until_the_next_start() {
        let a = data_frame(1, 2, b"lost start", CrcMode::Off);
        let wa = wire(&a);
        let mut stream = wa[1..].to_vec();
        stream.extend_from_slice(&wa);
        let mut d = Deframer::<64>::new();
        assert_eq!(decode(&mut d, &stream), [Owned::Frame(a)]);
        assert_eq!(d.stats().garbage_bytes as usize, wa.len() - 1);
    }

    #[test]
    fn oversized_frame_is_dropped() {
        let big = data_frame(1, 2, &[0x11; 40], CrcMode::Off); // 64 bytes
        let fits = data_frame(1, 2, &[0x22; 39], CrcMode::Off); // 63 bytes
        let mut stream = wire(&big);
        stream.extend_from_slice(&wire(&fits));
        // An oversized frame cut by START also resynchronises.
        stream.extend_from_slice(&wire(&big)[..65]);
        stream.extend_from_slice(&wire(&fits));
        let mut d = Deframer::<63>::new();
        assert_eq!(
            decode(&mut d, &stream),
            [Owned::Frame(fits.clone()), Owned::Frame(fits)]
        );
        assert_eq!(d.stats().oversized, 2);
        assert_eq!(d.stats().truncated, 0);
        assert_eq!(d.stats().garbage_bytes, 0);
    }

    #[test]
    fn bad_escapes_are_dropped() {
        let good = data_frame(1, 2, b"ok", CrcMode::Off);
        let wg = wire(&good);
        let mut d = Deframer::<64>::new();
        // ESC + a byte outside 0x50..=0x5f: dropped up to END.
        let mut s = wg[..10].to_vec();
        s.extend_from_slice(&[ESC, 0x41]);
        s.extend_from_slice(&wg[10..]);
        // ESC + ESC.
        s.extend_from_slice(&wg[..10]);
        s.extend_from_slice(&[ESC, ESC, 0x5f]);
        s.extend_from_slice(&wg[10..]);
        // ESC + END: the frame ends there.
        s.extend_from_slice(&wg[..10]);
        s.extend_from_slice(&[ESC, END]);
        // ESC + START: restart with the good frame.
        s.extend_from_slice(&wg[..10]);
        s.push(ESC);
        s.extend_from_slice(&wg);
        assert_eq!(decode(&mut d, &s), [Owned::Frame(good)]);
        assert_eq!(d.stats().bad_escape, 4);
        assert_eq!(d.stats().frames_ok, 1);
        assert_eq!(d.stats().garbage_bytes, 0);
    }

    #[test]
    fn length_mismatch_and_runts_are_dropped() {
        let mut f = data_frame(1, 2, b"abc", CrcMode::Off);
        f[6] = 28; // claims one byte more than sent
        let mut s = wire(&f);
        s.extend_from_slice(&[START, 1, 2, 3, END]); // runt
        s.extend_from_slice(&[START, END]); // empty
        let mut d = Deframer::<64>::new();
        assert!(decode(&mut d, &s).is_empty());
        assert_eq!(d.stats().bad_len, 3);
        assert_eq!(d.stats().frames_dropped(), 3);
    }

    #[test]
    fn bad_crc_is_dropped_and_zero_crc_is_accepted() {
        let good = data_frame(1, 2, b"payload", CrcMode::On);
        let mut bad = good.clone();
        bad[MIN_FRAME_LEN + 1] ^= 0x04;
        let mut unchecked = bad.clone();
        unchecked[..2].copy_from_slice(&[0, 0]);
        let mut s = wire(&bad);
        s.extend_from_slice(&wire(&good));
        s.extend_from_slice(&wire(&unchecked));
        let mut d = Deframer::<64>::new();
        assert_eq!(
            decode(&mut d, &s),
            [Owned::Frame(good), Owned::Frame(unchecked)]
        );
        assert_eq!(d.stats().bad_crc, 1);
    }

    #[test]
    fn push_and_chunked_feeding_agree() {
        let f = data_frame(7, 8, &[0x70; 20], CrcMode::On);
        let w = wire(&f);
        let mut d = Deframer::<64>::new();
        let mut got = None;
        for &b in &w {
            if let Some(Event::Frame(fr)) = d.push(b) {
                got = Some(fr.to_vec());
            }
        }
        assert_eq!(got, Some(f.clone()));
        let mut d = Deframer::<64>::new();
        let mut all = Vec::new();
        for chunk in w.chunks(3) {
            all.extend(decode(&mut d, chunk));
        }
        assert_eq!(all, [Owned::Frame(f)]);
        assert!(!d.in_frame());
    }

    #[test]
    fn reset_forgets_a_partial_frame() {
        let f = data_frame(1, 2, b"abc", CrcMode::Off);
        let w = wire(&f);
        let mut d = Deframer::<64>::new();
        assert!(decode(&mut d, &w[..10]).is_empty());
        assert!(d.in_frame());
        d.reset();
        assert!(!d.in_frame());
        assert!(decode(&mut d, &w[10..]).is_empty());
        assert_eq!(d.stats().garbage_bytes as usize, w.len() - 10);
        assert_eq!(d.stats().truncated, 0);
        d.reset_stats();
        assert_eq!(*d.stats(), DeframerStats::default());
    }

    fn escape_heavy_bytes() -> impl Strategy<Value = u8> {
        prop_oneof![0x70u8..=0x7f, any::<u8>()]
    }

    fn payload() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(escape_heavy_bytes(), 0..300)
    }

    fn crc_mode() -> impl Strategy<Value = CrcMode> {
        prop_oneof![Just(CrcMode::Off), Just(CrcMode::On)]
    }

    proptest! {
        #[test]
        #[cfg_attr(miri, ignore = "proptest generation costs minutes under Miri; safe code, covered by the port_deframer fuzz target")]
        fn any_payload_round_trips(p in payload(), crc in crc_mode(), src in any::<u32>(), dst in any::<u32>()) {
            let f = data_frame(src, dst, &p, crc);
            let w = wire(&f);
            prop_assert_eq!(w.len(), encoded_len(&f));
            prop_assert!(w.len() <= max_encoded_len(f.len()));
            // Inside the frame no special byte appears except ESC, always
            // followed by 0x50..=0x5f.
            prop_assert_eq!(w[0], START);
            prop_assert_eq!(*w.last().unwrap(), END);
            let body = &w[1..w.len() - 1];
            let mut i = 0;
            while i < body.len() {
                if body[i] == ESC {
                    prop_assert!((0x50..=0x5f).contains(&body[i + 1]));
                    i += 2;
                } else {
                    prop_assert!(!needs_escape(body[i]));
                    i += 1;
                }
            }
            let mut d = Deframer::<2048>::new();
            prop_assert_eq!(decode(&mut d, &w), std::vec![Owned::Frame(f)]);
        }

        #[test]
        #[cfg_attr(miri, ignore = "proptest generation costs minutes under Miri; safe code, covered by the port_deframer fuzz target")]
        fn corrupted_crc_is_dropped_and_counted(p in payload(), at in any::<prop::sample::Index>(),
                                                 flip in 1u8..=255) {
            let good = data_frame(1, 2, &p, CrcMode::On);
            let mut bad = good.clone();
            // Corrupt anything but the len field (which would be a bad_len).
            let mut i = at.index(bad.len() - 2);
            if i >= 6 { i += 2; }
            bad[i] ^= flip;
            prop_assume!(bad[..2] != [0, 0]);
            let mut s = wire(&bad);
            s.extend_from_slice(&wire(&good));
            let mut d = Deframer::<2048>::new();
            prop_assert_eq!(decode(&mut d, &s), std::vec![Owned::Frame(good)]);
            prop_assert_eq!(d.stats().bad_crc, 1);
        }

        #[test]
        #[cfg_attr(miri, ignore = "proptest generation costs minutes under Miri; safe code, covered by the port_deframer fuzz target")]
        fn garbage_without_start_between_frames_is_ignored(
            items in proptest::collection::vec(
                (payload(), proptest::collection::vec(any::<u8>().prop_filter("no START", |&b| b != START), 0..40)),
                1..6),
        ) {
            let mut stream = Vec::new();
            let mut expect = Vec::new();
            let mut garbage = 0u32;
            for (p, g) in &items {
                for &b in g {
                    match Cmd::from_byte(b) {
                        Some(c) => expect.push(Owned::Command(c)),
                        None if (0x71..=0x73).contains(&b) => {}
                        None => garbage += 1,
                    }
                }
                stream.extend_from_slice(g);
                let f = data_frame(1, 2, p, CrcMode::On);
                stream.extend_from_slice(&wire(&f));
                expect.push(Owned::Frame(f));
            }
            let mut d = Deframer::<2048>::new();
            prop_assert_eq!(decode(&mut d, &stream), expect);
            prop_assert_eq!(d.stats().garbage_bytes, garbage);
            prop_assert_eq!(d.stats().frames_dropped(), 0);
        }

        #[test]
        #[cfg_attr(miri, ignore = "proptest generation costs minutes under Miri; safe code, covered by the port_deframer fuzz target")]
        fn arbitrary_garbage_never_hides_a_frame(
            items in proptest::collection::vec(
                (payload(), proptest::collection::vec(escape_heavy_bytes(), 0..60)),
                1..6),
            chunk in 1usize..64,
        ) {
            let mut stream = Vec::new();
            let mut sent = Vec::new();
            for (p, g) in &items {
                stream.extend_from_slice(g);
                let f = data_frame(9, 9, p, CrcMode::On);
                stream.extend_from_slice(&wire(&f));
                sent.push(f);
            }
            let mut d = Deframer::<2048>::new();
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                got.extend(frames(&decode(&mut d, c)));
            }
            // Every real frame arrives, in order (garbage could in theory
            // forge an extra one, so check for a subsequence).
            let mut it = got.iter();
            for f in &sent {
                prop_assert!(it.any(|g| g == f), "frame lost");
            }
        }

        #[test]
        #[cfg_attr(miri, ignore = "proptest generation costs minutes under Miri; safe code, covered by the port_deframer fuzz target")]
        fn truncated_and_oversized_frames_never_hide_the_next(
            a in payload(), b in proptest::collection::vec(any::<u8>(), 0..100), cut in any::<prop::sample::Index>(),
        ) {
            let fa = data_frame(1, 1, &a, CrcMode::Off);
            let fb = data_frame(2, 2, &b, CrcMode::Off);
            let wa = wire(&fa);
            // wa[..cut] ends before END, so the frame is truncated by the
            // next START.
            let cut = 1 + cut.index(wa.len() - 1);
            let mut s = wa[..cut].to_vec();
            s.extend_from_slice(&wire(&fb));
            // A 124-byte deframer: fa may be oversized, fb always fits.
            let mut d = Deframer::<124>::new();
            prop_assert_eq!(frames(&decode(&mut d, &s)), std::vec![fb]);
            let st = d.stats();
            prop_assert_eq!(st.truncated + st.oversized + st.bad_escape, 1);
            // Bytes stored before the cut: every wire byte but ESC.
            let stored = wa[1..cut].iter().filter(|&&x| x != ESC).count();
            prop_assert_eq!(st.oversized, u32::from(stored > 124));
        }

        #[test]
        #[cfg_attr(miri, ignore = "proptest generation costs minutes under Miri; safe code, covered by the port_deframer fuzz target")]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(escape_heavy_bytes(), 0..2000)) {
            let mut d = Deframer::<32>::new();
            for e in decode(&mut d, &bytes) {
                if let Owned::Frame(f) = e {
                    prop_assert!(check_frame(&f).is_ok());
                    prop_assert!(f.len() >= PORT_HEADER_LEN);
                }
            }
        }
    }
}
