//! The command mailbox: PANIC, RESET and STOP between the two cores.
//!
//! NuttX overlays the resource-table header's two reserved words with two
//! command slots (DESIGN.md §6): `cmd_master` at table + 8 and `cmd_slave` at
//! table + 12. Each holds `(cmd << 16) | (val & 0xffff)` with the commands
//! [`CMD_DONE`], [`CMD_READY`], [`CMD_PANIC`], [`CMD_RESET`], [`CMD_STOP`]
//! and [`CMD_ACK`]. Platforms without a `panic()`/`reset()` hook use it.
//!
//! # Protocol as implemented here
//!
//! - Each side writes **only its own slot** ([`Mailbox::post`], the ACK that
//!   [`Mailbox::poll`] writes, and the DONE that completes an exchange). It
//!   tolerates a NuttX peer that clears *our* slot to DONE when it reads it.
//! - Sender: `post(cmd)` writes the command into its slot; the caller rings
//!   the doorbell; [`Mailbox::wait_ack`] (or repeated
//!   [`Mailbox::ack_received`]) waits for the peer's ACK and then writes DONE
//!   into the sender's own slot, so that a later identical command is a new
//!   value for the receiver. Ring the doorbell again after that if the same
//!   command may be sent again soon.
//! - Receiver: the doorbell handler calls [`Mailbox::poll`]. It reads the
//!   peer's slot and, when the value changed to a command, **automatically
//!   writes ACK into its own slot** (before returning, so an application that
//!   stops or resets right away has already answered) and returns the
//!   command once; the caller rings the doorbell. The value it consumed is
//!   remembered, so a repeated doorbell does not deliver the command twice.
//!   An ACK is never answered with an ACK (a NuttX flaw).
//! - Our ACK carries a sequence number in its `val` half (NuttX ignores it
//!   and always sends 0), so each ACK differs from the previous one; a
//!   restarted side continues the sequence from the ACK left in its slot.
//!
//! # The ACK cannot be lost to the doorbell handler
//!
//! In NuttX the waiting sender and its own doorbell handler both read (and
//! clear) the peer's slot, so the handler can swallow the ACK and the sender
//! times out. Here nobody clears the peer's slot, and both the waiter and
//! `poll()` feed the same local record. Each `post()` starts a new *epoch*
//! and notes the peer's slot value at that moment; any reader (waiter or
//! handler) that reads the epoch, then finds in the peer's slot an ACK that
//! differs from the noted value, records "epoch acknowledged" (an atomic
//! maximum, so a late or duplicate record is harmless, and a read that began
//! before the post can never count for it). The command is acknowledged once
//! its epoch was recorded or, for a NuttX peer that always sends `ACK|0`,
//! once the peer cleared the sender's slot. All methods take `&self` and are
//! lock-free, so a doorbell handler may run in an interrupt that preempts a
//! waiting thread.
//!
//! # Limits of a two-slot mailbox
//!
//! A slot holds one value. If both sides post at the same moment, or a side
//! posts a command right after ACKing one before the peer has seen that ACK,
//! the later write replaces the earlier one and the peer's wait times out:
//! treat [`MailboxError::Timeout`] as "retry or give up". Posting the value
//! that is still in the slot is not a new command for the peer. A received
//! command that nobody polled for is replaced by the next one (latest wins).
//! Call `poll()` from one context (the doorbell handler): two contexts
//! polling at once are memory-safe but could, in a rare interleaving, both
//! deliver the same command.
//! The library never acts on a command itself: it hands it to the caller.
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::remoteproc::Role;
use crate::shm::{Region, ShmError};

/// No command / exchange finished.
pub const CMD_DONE: u16 = 0;
/// The sender is ready.
pub const CMD_READY: u16 = 1;
/// The receiver should panic (dump its state and halt).
pub const CMD_PANIC: u16 = 2;
/// The receiver should reset; `val` is passed to its reset hook.
pub const CMD_RESET: u16 = 3;
/// The receiver should stop.
pub const CMD_STOP: u16 = 4;
/// Acknowledges the peer's command.
pub const CMD_ACK: u16 = 0xffff;

/// Offset of `cmd_master` from the start of the resource table.
pub const CMD_MASTER_OFFSET: usize = 8;
/// Offset of `cmd_slave` from the start of the resource table.
pub const CMD_SLAVE_OFFSET: usize = 12;

/// Encodes a slot value: `(cmd << 16) | val`.
pub const fn encode(cmd: u16, val: u16) -> u32 {
    ((cmd as u32) << 16) | val as u32
}

/// Splits a slot value into `(cmd, val)`.
pub const fn decode(word: u32) -> (u16, u16) {
    ((word >> 16) as u16, word as u16)
}

/// Errors of the command mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MailboxError {
    /// The mailbox slots are not inside the region or not 4-byte aligned.
    #[error("command mailbox slot unusable: {0}; check the resource-table offset")]
    Shm(#[from] ShmError),
    /// The peer did not acknowledge in time.
    #[error(
        "the peer did not acknowledge the command in time; it may be dead or busy, or both \
         sides posted at once: retry, or fall back to resetting it"
    )]
    Timeout,
    /// `wait_ack` was called with no command posted.
    #[error("no command is waiting for an acknowledgement; post one first")]
    NothingPending,
    /// The command cannot be posted (DONE and ACK are protocol values).
    #[error("command {cmd:#x} cannot be posted: DONE (0) and ACK (0xffff) are protocol values")]
    InvalidCommand {
        /// The command number.
        cmd: u16,
    },
}

/// A command carried by the mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// READY (1).
    Ready,
    /// PANIC (2): dump state and halt.
    Panic,
    /// RESET (3) with the value for the reset hook.
    Reset(u16),
    /// STOP (4).
    Stop,
    /// A command number this version does not know (still acknowledged).
    Other {
        /// Command number.
        cmd: u16,
        /// Its value.
        val: u16,
    },
}

impl Command {
    /// The slot value of this command.
    pub const fn to_word(self) -> u32 {
        match self {
            Command::Ready => encode(CMD_READY, 0),
            Command::Panic => encode(CMD_PANIC, 0),
            Command::Reset(v) => encode(CMD_RESET, v),
            Command::Stop => encode(CMD_STOP, 0),
            Command::Other { cmd, val } => encode(cmd, val),
        }
    }

    /// The command in a slot value; `None` for DONE and ACK.
    pub const fn from_word(word: u32) -> Option<Command> {
        let (cmd, val) = decode(word);
        Some(match cmd {
            CMD_DONE | CMD_ACK => return None,
            CMD_READY => Command::Ready,
            CMD_PANIC => Command::Panic,
            CMD_RESET => Command::Reset(val),
            CMD_STOP => Command::Stop,
            _ => Command::Other { cmd, val },
        })
    }
}

/// Bound on compare-and-swap retries (losing races repeatedly must not spin
/// forever; a lost race means another context made progress).
const CAS_ROUNDS: usize = 4;

/// One side's view of the command mailbox. Share it by reference between the
/// doorbell handler and the code that sends commands.
#[derive(Debug)]
pub struct Mailbox {
    region: Region,
    my_slot: usize,
    peer_slot: usize,
    /// Last peer-slot value `poll` took into account.
    last_peer: AtomicU32,
    /// Sequence number for the `val` of our next ACK.
    ack_seq: AtomicU32,
    /// Number of `post()`s so far; the epoch of the current command.
    epoch: AtomicU32,
    /// The peer's slot value when the current epoch began.
    snap: AtomicU32,
    /// Highest epoch for which a fresh ACK was seen (0 = none).
    acked_epoch: AtomicU32,
    /// The command awaiting an ACK (0 = none).
    posted: AtomicU32,
    /// The last posted command was acknowledged.
    completed: AtomicBool,
}

impl Mailbox {
    /// The mailbox of the side `role` for a resource table starting at
    /// `table_offset` in `region`. Both slots must lie inside the region and
    /// be 4-byte aligned.
    pub fn new(region: Region, role: Role, table_offset: usize) -> Result<Mailbox, MailboxError> {
        let slot = |rel: usize| {
            table_offset.checked_add(rel).ok_or(ShmError::OutOfBounds {
                offset: table_offset,
                len: rel + 4,
                size: region.len(),
            })
        };
        let master = slot(CMD_MASTER_OFFSET)?;
        let slave = slot(CMD_SLAVE_OFFSET)?;
        region.atomic_u32(master)?;
        region.atomic_u32(slave)?;
        let (my_slot, peer_slot) = match role {
            Role::Master => (master, slave),
            Role::Remote => (slave, master),
        };
        // Continue the ACK sequence of a previous incarnation of this side,
        // so our next ACK differs from the one the peer last saw.
        let ack_seq = match decode(region.load_u32(my_slot)?) {
            (CMD_ACK, v) => u32::from(v) + 1,
            _ => 1,
        };
        Ok(Mailbox {
            region,
            my_slot,
            peer_slot,
            last_peer: AtomicU32::new(encode(CMD_DONE, 0)),
            ack_seq: AtomicU32::new(ack_seq),
            epoch: AtomicU32::new(0),
            snap: AtomicU32::new(0),
            acked_epoch: AtomicU32::new(0),
            posted: AtomicU32::new(0),
            completed: AtomicBool::new(false),
        })
    }

    /// Region offset of the slot this side writes.
    pub fn my_slot_offset(&self) -> usize {
        self.my_slot
    }

    /// Region offset of the slot the peer writes.
    pub fn peer_slot_offset(&self) -> usize {
        self.peer_slot
    }

    /// The raw value of this side's slot (for dumps).
    pub fn my_slot_value(&self) -> Result<u32, MailboxError> {
        Ok(self.region.load_u32(self.my_slot)?)
    }

    /// The raw value of the peer's slot (for dumps).
    pub fn peer_slot_value(&self) -> Result<u32, MailboxError> {
        Ok(self.region.load_u32(self.peer_slot)?)
    }

    /// Forgets all local state (what was consumed, what is pending), e.g.
    /// after the resource table was rewritten for a restart. A command
    /// sitting in the peer's slot will be delivered again by the next poll.
    pub fn reset(&self) {
        self.last_peer.store(encode(CMD_DONE, 0), Ordering::Release);
        self.posted.store(0, Ordering::Release);
        self.completed.store(false, Ordering::Release);
    }

    /// Writes the command into this side's slot. Ring the doorbell
    /// afterwards, then [`Mailbox::wait_ack`] for the answer.
    ///
    /// The ACK already in the peer's slot (if any) is noted first, so it is
    /// not mistaken for the answer to this command. Post from one context,
    /// one command at a time: wait for the ACK (or the timeout) of the
    /// previous one first.
    pub fn post(&self, cmd: Command) -> Result<(), MailboxError> {
        let word = cmd.to_word();
        if let Command::Other { cmd, .. } = cmd {
            if cmd == CMD_DONE || cmd == CMD_ACK {
                return Err(MailboxError::InvalidCommand { cmd });
            }
        }
        let before = self.region.load_u32(self.peer_slot)?;
        self.snap.store(before, Ordering::Release);
        // Readers that see the new epoch read the peer's slot after `before`.
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.completed.store(false, Ordering::Release);
        self.posted.store(word, Ordering::Release);
        self.region.store_u32(self.my_slot, word)?;
        Ok(())
    }

    /// Doorbell handler: returns a newly received command, once.
    ///
    /// When the peer's slot changed to a command, writes ACK into this
    /// side's slot before returning it (ring the doorbell afterwards). An ACK
    /// in the peer's slot is recorded for [`Mailbox::ack_received`] and never
    /// answered. Returns `None` when nothing new arrived.
    pub fn poll(&self) -> Result<Option<Command>, MailboxError> {
        for _ in 0..CAS_ROUNDS {
            let epoch = self.epoch.load(Ordering::Acquire);
            // `last` before the slot: a successful CAS then proves that the
            // value read is not older than what was last taken into account.
            let last = self.last_peer.load(Ordering::Acquire);
            let p = self.region.load_u32(self.peer_slot)?;
            if p == last {
                break;
            }
            if self
                .last_peer
                .compare_exchange(last, p, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            match decode(p).0 {
                CMD_ACK => self.note_ack(epoch, p),
                CMD_DONE => {}
                _ => {
                    let seq = self.ack_seq.fetch_add(1, Ordering::Relaxed);
                    self.region
                        .store_u32(self.my_slot, encode(CMD_ACK, seq as u16))?;
                    return Ok(Command::from_word(p));
                }
            }
        }
        Ok(None)
    }

    /// Records that the ACK `p`, read from the peer's slot after `epoch` was
    /// read, answers that epoch's command if it differs from the value the
    /// slot held when the epoch began.
    fn note_ack(&self, epoch: u32, p: u32) {
        let snap = self.snap.load(Ordering::Acquire);
        // A post racing with this reader makes the record at most one for
        // an older, finished epoch: harmless.
        if epoch != 0 && self.epoch.load(Ordering::Acquire) == epoch && p != snap {
            self.acked_epoch.fetch_max(epoch, Ordering::AcqRel);
        }
    }

    /// Records the ACK in the peer's slot, if there is one. Commands are
    /// left for `poll()`.
    fn observe_ack(&self) -> Result<(), MailboxError> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let p = self.region.load_u32(self.peer_slot)?;
        if decode(p).0 == CMD_ACK {
            self.note_ack(epoch, p);
        }
        Ok(())
    }

    /// True once the last posted command was acknowledged. On the first
    /// `true`, writes DONE into this side's slot (unless something else has
    /// replaced the command there).
    ///
    /// A command counts as acknowledged when an ACK other than the value
    /// noted at `post()` was seen in the peer's slot since (by this call or by
    /// `poll()`), or when the peer cleared our slot to DONE (what a NuttX
    /// peer does when it reads a command).
    pub fn ack_received(&self) -> Result<bool, MailboxError> {
        if self.completed.load(Ordering::Acquire) {
            return Ok(true);
        }
        let posted = self.posted.load(Ordering::Acquire);
        if posted == 0 {
            return Ok(false);
        }
        self.observe_ack()?;
        let acked = self.acked_epoch.load(Ordering::Acquire) == self.epoch.load(Ordering::Acquire)
            || self.region.load_u32(self.my_slot)? == encode(CMD_DONE, 0);
        if acked {
            self.completed.store(true, Ordering::Release);
            self.posted.store(0, Ordering::Release);
            // Only replace our own command: if the doorbell handler has put
            // an ACK there meanwhile, it stays.
            let _ = self.region.atomic_u32(self.my_slot)?.compare_exchange(
                posted.to_le(),
                encode(CMD_DONE, 0).to_le(),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
        Ok(acked)
    }

    /// Waits for the ACK of the last posted command.
    ///
    /// `wait` is called between checks; it should wait a little (sleep,
    /// yield, spin, wait for the doorbell) and return `false` once the
    /// deadline has passed, which ends the wait with
    /// [`MailboxError::Timeout`]. No timer is assumed.
    pub fn wait_ack(&self, mut wait: impl FnMut() -> bool) -> Result<(), MailboxError> {
        if self.posted.load(Ordering::Acquire) == 0 && !self.completed.load(Ordering::Acquire) {
            return Err(MailboxError::NothingPending);
        }
        loop {
            if self.ack_received()? {
                return Ok(());
            }
            if !wait() {
                return if self.ack_received()? {
                    Ok(())
                } else {
                    Err(MailboxError::Timeout)
                };
            }
        }
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    const TABLE: usize = 0x18;
    const MASTER_SLOT: usize = 0x20;
    const SLAVE_SLOT: usize = 0x24;

    fn pair() -> (Region, Mailbox, Mailbox) {
        let r = Region::new_heap(0x100);
        let m = Mailbox::new(r.clone(), Role::Master, TABLE).unwrap();
        let s = Mailbox::new(r.clone(), Role::Remote, TABLE).unwrap();
        (r, m, s)
    }

    /// A generous hang guard for the threaded tests (not a timing assertion).
    fn deadline() -> impl FnMut() -> bool {
        let end = Instant::now() + Duration::from_secs(30);
        move || {
            std::thread::yield_now();
            Instant::now() < end
        }
    }

    #[test]
    fn slots_and_encoding_are_byte_exact() {
        let (r, m, s) = pair();
        assert_eq!(m.my_slot_offset(), MASTER_SLOT);
        assert_eq!(m.peer_slot_offset(), SLAVE_SLOT);
        assert_eq!(s.my_slot_offset(), SLAVE_SLOT);
        m.post(Command::Reset(0x1234)).unwrap();
        let mut b = [0u8; 8];
        r.read_bytes(MASTER_SLOT, &mut b).unwrap();
        assert_eq!(b, [0x34, 0x12, 0x03, 0x00, 0, 0, 0, 0]);
        s.post(Command::Panic).unwrap();
        r.read_bytes(MASTER_SLOT, &mut b).unwrap();
        assert_eq!(b, [0x34, 0x12, 0x03, 0x00, 0x00, 0x00, 0x02, 0x00]);
        assert_eq!(encode(CMD_ACK, 7), 0xffff_0007);
        assert_eq!(decode(0x0003_1234), (CMD_RESET, 0x1234));
        assert_eq!(Command::from_word(0x0004_0000), Some(Command::Stop));
        assert_eq!(Command::from_word(0xffff_0000), None);
        assert_eq!(Command::from_word(0), None);
    }

    #[test]
    fn a_command_is_delivered_once_and_acknowledged() {
        let (r, m, s) = pair();
        m.post(Command::Stop).unwrap();
        assert_eq!(s.poll().unwrap(), Some(Command::Stop));
        // repeated doorbells do not deliver it again
        assert_eq!(s.poll().unwrap(), None);
        assert_eq!(s.poll().unwrap(), None);
        assert_eq!(decode(r.load_u32(SLAVE_SLOT).unwrap()).0, CMD_ACK);
        // the receiver never wrote the sender's slot
        assert_eq!(r.load_u32(MASTER_SLOT).unwrap(), Command::Stop.to_word());
        assert!(m.ack_received().unwrap());
        // the sender cleared its own slot on completion
        assert_eq!(r.load_u32(MASTER_SLOT).unwrap(), 0);
        // ... so the same command again is delivered again
        assert_eq!(s.poll().unwrap(), None);
        m.post(Command::Stop).unwrap();
        assert_eq!(s.poll().unwrap(), Some(Command::Stop));
    }

    #[test]
    fn an_ack_is_never_answered_with_an_ack() {
        let (r, m, _s) = pair();
        r.store_u32(SLAVE_SLOT, encode(CMD_ACK, 0)).unwrap();
        assert_eq!(m.poll().unwrap(), None);
        assert_eq!(r.load_u32(MASTER_SLOT).unwrap(), 0);
        r.store_u32(SLAVE_SLOT, encode(CMD_ACK, 1)).unwrap();
        assert_eq!(m.poll().unwrap(), None);
        assert_eq!(r.load_u32(MASTER_SLOT).unwrap(), 0);
        // and two mailboxes exchanging a command settle: no ACK ping-pong
        let (r, m, s) = pair();
        m.post(Command::Panic).unwrap();
        assert_eq!(s.poll().unwrap(), Some(Command::Panic));
        let ack = r.load_u32(SLAVE_SLOT).unwrap();
        for _ in 0..3 {
            assert_eq!(m.poll().unwrap(), None);
            assert_eq!(s.poll().unwrap(), None);
        }
        assert_eq!(r.load_u32(SLAVE_SLOT).unwrap(), ack);
        assert_eq!(r.load_u32(MASTER_SLOT).unwrap(), Command::Panic.to_word());
        // the handler's poll recorded the ACK: the waiter finds it
        assert!(m.ack_received().unwrap());
    }

    #[test]
    fn an_ack_seen_only_by_the_handler_is_not_lost() {
        let (r, m, s) = pair();
        m.post(Command::Reset(1)).unwrap();
        assert_eq!(s.poll().unwrap(), Some(Command::Reset(1)));
        // the master's doorbell handler sees the ACK ...
        assert_eq!(m.poll().unwrap(), None);
        // ... and the peer overwrites its slot before the waiter looks
        r.store_u32(SLAVE_SLOT, encode(CMD_DONE, 0)).unwrap();
        assert_eq!(m.wait_ack(|| false), Ok(()));
    }

    #[test]
    fn a_stale_ack_is_not_taken_for_a_fresh_one() {
        let (r, m, _s) = pair();
        // an old ACK nobody looked at is in the peer's slot
        r.store_u32(SLAVE_SLOT, encode(CMD_ACK, 7)).unwrap();
        m.post(Command::Panic).unwrap();
        assert!(!m.ack_received().unwrap());
        assert_eq!(m.poll().unwrap(), None);
        assert!(!m.ack_received().unwrap());
        r.store_u32(SLAVE_SLOT, encode(CMD_ACK, 8)).unwrap();
        assert!(m.ack_received().unwrap());
    }

    #[test]
    fn a_nuttx_peer_that_clears_our_slot_counts_as_acknowledged() {
        let (r, m, _s) = pair();
        // NuttX always acks with ACK|0 and clears the sender's slot
        r.store_u32(SLAVE_SLOT, encode(CMD_ACK, 0)).unwrap();
        m.poll().unwrap();
        m.post(Command::Stop).unwrap();
        assert!(!m.ack_received().unwrap());
        r.store_u32(MASTER_SLOT, 0).unwrap();
        r.store_u32(SLAVE_SLOT, encode(CMD_ACK, 0)).unwrap();
        assert_eq!(m.wait_ack(|| false), Ok(()));
    }

    #[test]
    fn completion_keeps_an_ack_written_by_the_handler() {
        let (r, m, s) = pair();
        m.post(Command::Stop).unwrap();
        assert_eq!(s.poll().unwrap(), Some(Command::Stop));
        // the master's doorbell handler sees the remote's ACK ...
        assert_eq!(m.poll().unwrap(), None);
        // ... then the remote sends a command of its own, which the
        // master's handler acknowledges before the master's waiter runs
        s.post(Command::Panic).unwrap();
        assert_eq!(m.poll().unwrap(), Some(Command::Panic));
        let master_ack = r.load_u32(MASTER_SLOT).unwrap();
        assert_eq!(decode(master_ack).0, CMD_ACK);
        // the master's wait completes (the handler recorded the remote's ACK)
        // and must not overwrite its ACK with DONE
        assert!(m.ack_received().unwrap());
        assert_eq!(r.load_u32(MASTER_SLOT).unwrap(), master_ack);
    }

    #[test]
    fn timeouts_and_misuse_are_errors() {
        let (_r, m, _s) = pair();
        assert_eq!(m.wait_ack(|| true), Err(MailboxError::NothingPending));
        m.post(Command::Reset(5)).unwrap();
        let mut calls = 0;
        assert_eq!(
            m.wait_ack(|| {
                calls += 1;
                calls < 5
            }),
            Err(MailboxError::Timeout)
        );
        assert_eq!(calls, 5);
        assert_eq!(
            m.post(Command::Other {
                cmd: CMD_ACK,
                val: 0
            }),
            Err(MailboxError::InvalidCommand { cmd: CMD_ACK })
        );
        assert_eq!(
            m.post(Command::Other {
                cmd: CMD_DONE,
                val: 1
            }),
            Err(MailboxError::InvalidCommand { cmd: CMD_DONE })
        );
        let r = Region::new_heap(0x20);
        assert!(matches!(
            Mailbox::new(r.clone(), Role::Master, 0x18),
            Err(MailboxError::Shm(ShmError::OutOfBounds { .. }))
        ));
        assert!(matches!(
            Mailbox::new(r.clone(), Role::Master, 2),
            Err(MailboxError::Shm(ShmError::Misaligned { .. }))
        ));
        assert!(Mailbox::new(r, Role::Master, usize::MAX - 4).is_err());
    }

    #[test]
    fn unknown_commands_are_delivered_and_acknowledged() {
        let (r, m, s) = pair();
        m.post(Command::Other { cmd: 9, val: 2 }).unwrap();
        assert_eq!(s.poll().unwrap(), Some(Command::Other { cmd: 9, val: 2 }));
        assert_eq!(decode(r.load_u32(SLAVE_SLOT).unwrap()).0, CMD_ACK);
        assert!(m.ack_received().unwrap());
    }

    #[test]
    fn a_restarted_receiver_continues_the_ack_sequence() {
        let (r, m, s) = pair();
        m.post(Command::Reset(7)).unwrap();
        assert_eq!(s.poll().unwrap(), Some(Command::Reset(7)));
        assert!(m.ack_received().unwrap());
        let first_ack = r.load_u32(SLAVE_SLOT).unwrap();
        // the remote reboots with the shared memory left as it was
        drop(s);
        let s = Mailbox::new(r.clone(), Role::Remote, TABLE).unwrap();
        m.post(Command::Stop).unwrap();
        assert_eq!(s.poll().unwrap(), Some(Command::Stop));
        assert_ne!(r.load_u32(SLAVE_SLOT).unwrap(), first_ack);
        assert!(m.ack_received().unwrap());
    }

    #[test]
    fn reset_forgets_consumed_commands() {
        let (_r, m, s) = pair();
        m.post(Command::Panic).unwrap();
        assert_eq!(s.poll().unwrap(), Some(Command::Panic));
        assert_eq!(s.poll().unwrap(), None);
        s.reset();
        assert_eq!(s.poll().unwrap(), Some(Command::Panic));
    }

    #[test]
    fn two_threads_exchange_panic_reset_and_stop() {
        let (_r, m, s) = pair();
        std::thread::scope(|sc| {
            // the remote: services its doorbell, then sends PANIC itself
            let remote = sc.spawn(|| {
                let mut got = Vec::new();
                let mut wait = deadline();
                while got.len() < 2 {
                    if let Some(c) = s.poll().unwrap() {
                        got.push(c);
                    }
                    assert!(wait(), "remote never received the commands");
                }
                // let the master's exchange finish before reusing our slot
                while s.peer_slot_value().unwrap() != 0 {
                    assert!(wait());
                }
                s.post(Command::Panic).unwrap();
                s.wait_ack(deadline()).unwrap();
                let mut wait = deadline();
                while got.len() < 3 {
                    if let Some(c) = s.poll().unwrap() {
                        got.push(c);
                    }
                    assert!(wait(), "remote never received STOP");
                }
                got
            });
            m.post(Command::Reset(0x1234)).unwrap();
            m.wait_ack(deadline()).unwrap();
            m.post(Command::Ready).unwrap();
            m.wait_ack(deadline()).unwrap();
            let mut wait = deadline();
            let panic = loop {
                if let Some(c) = m.poll().unwrap() {
                    break c;
                }
                assert!(wait(), "master never received PANIC");
            };
            assert_eq!(panic, Command::Panic);
            while m.peer_slot_value().unwrap() != 0 {
                assert!(wait());
            }
            m.post(Command::Stop).unwrap();
            m.wait_ack(deadline()).unwrap();
            assert_eq!(
                remote.join().unwrap(),
                vec![Command::Reset(0x1234), Command::Ready, Command::Stop]
            );
        });
    }

    #[test]
    fn a_racing_doorbell_handler_never_steals_the_ack() {
        let (_r, m, s) = pair();
        let rounds: u16 = if cfg!(miri) { 20 } else { 1000 };
        let done = AtomicBool::new(false);
        std::thread::scope(|sc| {
            // the master's doorbell handler, polling as hard as it can
            let handler = sc.spawn(|| {
                let mut delivered = 0;
                while !done.load(Ordering::Acquire) {
                    if m.poll().unwrap().is_some() {
                        delivered += 1;
                    }
                }
                delivered
            });
            // the remote, answering every command
            let remote = sc.spawn(|| {
                let mut got = Vec::new();
                while !done.load(Ordering::Acquire) {
                    if let Some(c) = s.poll().unwrap() {
                        got.push(c);
                    }
                    std::thread::yield_now();
                }
                got
            });
            let mut sent = Vec::new();
            for i in 0..rounds {
                let cmd = match i % 3 {
                    0 => Command::Panic,
                    1 => Command::Reset(i),
                    _ => Command::Stop,
                };
                m.post(cmd).unwrap();
                m.wait_ack(deadline())
                    .unwrap_or_else(|e| panic!("round {i}: {e}"));
                sent.push(cmd);
            }
            done.store(true, Ordering::Release);
            assert_eq!(
                handler.join().unwrap(),
                0,
                "an ACK was delivered as a command"
            );
            let got = remote.join().unwrap();
            let first_diff = got.iter().zip(&sent).position(|(a, b)| a != b);
            assert!(
                got.len() == sent.len() && first_diff.is_none(),
                "remote got {} commands for {} acknowledged, first difference at {:?}",
                got.len(),
                sent.len(),
                first_diff
            );
        });
    }
}
