//! Command mailbox: two sides (master A, remote B) over one region, driven
//! by an arbitrary sequence of their operations interleaved with hostile
//! writes into either slot (a peer that misbehaves, or a NuttX peer that
//! clears our slot).
//!
//! Checked after every operation, against a model of the protocol:
//! - each side writes only its own slot, and nothing outside the two slots
//!   is ever touched;
//! - `poll` delivers a command exactly when the peer's slot changed to a
//!   command value, answers it with an ACK whose value differs from the
//!   previous ACK, and never answers an ACK or DONE;
//! - `ack_received`/`wait_ack` report an acknowledgement only after a fresh
//!   ACK in the peer's slot (or our slot cleared), then clear our slot;
//!   `wait_ack` ends when its wait function says so;
//! - without hostile writes, post → peer poll → ack always completes.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rptun::remoteproc::mailbox::{
    decode, encode, Command, Mailbox, MailboxError, CMD_ACK, CMD_DONE, CMD_MASTER_OFFSET,
    CMD_PANIC, CMD_READY, CMD_RESET, CMD_SLAVE_OFFSET, CMD_STOP,
};
use rptun::remoteproc::Role;
use rptun::shm::{Region, ShmError};

const LEN: usize = 64;
const PATTERN: u8 = 0x5A;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Side {
    A,
    B,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Cmd {
    Ready,
    Panic,
    Reset(u16),
    Stop,
    Other(u16, u16),
}

impl Cmd {
    fn get(self) -> Command {
        match self {
            Cmd::Ready => Command::Ready,
            Cmd::Panic => Command::Panic,
            Cmd::Reset(v) => Command::Reset(v),
            Cmd::Stop => Command::Stop,
            Cmd::Other(cmd, val) => Command::Other { cmd, val },
        }
    }
}

/// A value a hostile or quirky peer writes into a slot.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Word {
    Raw(u32),
    Ack(u16),
    Done,
    Cmd(Cmd),
}

impl Word {
    fn get(self) -> u32 {
        match self {
            Word::Raw(v) => v,
            Word::Ack(v) => encode(CMD_ACK, v),
            Word::Done => encode(CMD_DONE, 0),
            Word::Cmd(c) => c.get().to_word(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Post(Side, Cmd),
    Poll(Side),
    AckReceived(Side),
    /// `wait_ack` whose wait function writes these values into the peer's
    /// slot, one per call, then reports the deadline passed.
    WaitAck(Side, Vec<Word>),
    Reset(Side),
    /// The side restarts: a new `Mailbox` over the same slots.
    Recreate(Side),
    /// A hostile write into a slot (`Side` names the slot's owner).
    Write(Side, Word),
    /// post → the peer's doorbell handler → ack_received → doorbell again.
    Exchange(Side, Cmd),
}

#[derive(Arbitrary, Debug)]
struct Input {
    table_offset: u8,
    ops: Vec<Op>,
}

/// Model of one side's local state (mirrors the documented protocol).
#[derive(Debug, Clone)]
struct Model {
    my: usize,
    peer: usize,
    last_peer: u32,
    ack_seq: u32,
    epoch: u32,
    snap: u32,
    acked_epoch: u32,
    posted: u32,
    completed: bool,
}

impl Model {
    fn new(my: usize, peer: usize, my_slot_value: u32) -> Model {
        let ack_seq = match decode(my_slot_value) {
            (CMD_ACK, v) => u32::from(v) + 1,
            _ => 1,
        };
        Model {
            my,
            peer,
            last_peer: 0,
            ack_seq,
            epoch: 0,
            snap: 0,
            acked_epoch: 0,
            posted: 0,
            completed: false,
        }
    }

    fn note_ack(&mut self, p: u32) {
        if self.epoch != 0 && p != self.snap {
            self.acked_epoch = self.acked_epoch.max(self.epoch);
        }
    }

    fn poll(&mut self, slots: &mut [u32; 2]) -> Option<Command> {
        let p = slots[self.peer];
        if p == self.last_peer {
            return None;
        }
        self.last_peer = p;
        match decode(p).0 {
            CMD_ACK => {
                self.note_ack(p);
                None
            }
            CMD_DONE => None,
            _ => {
                slots[self.my] = encode(CMD_ACK, self.ack_seq as u16);
                self.ack_seq += 1;
                Command::from_word(p)
            }
        }
    }

    fn post(&mut self, cmd: Command, slots: &mut [u32; 2]) -> Result<(), MailboxError> {
        if let Command::Other { cmd, .. } = cmd {
            if cmd == CMD_DONE || cmd == CMD_ACK {
                return Err(MailboxError::InvalidCommand { cmd });
            }
        }
        self.snap = slots[self.peer];
        self.epoch += 1;
        self.completed = false;
        self.posted = cmd.to_word();
        slots[self.my] = cmd.to_word();
        Ok(())
    }

    fn ack_received(&mut self, slots: &mut [u32; 2]) -> bool {
        if self.completed {
            return true;
        }
        if self.posted == 0 {
            return false;
        }
        let p = slots[self.peer];
        if decode(p).0 == CMD_ACK {
            self.note_ack(p);
        }
        let acked = self.acked_epoch == self.epoch || slots[self.my] == 0;
        if acked {
            self.completed = true;
            if slots[self.my] == self.posted {
                slots[self.my] = 0;
            }
            self.posted = 0;
        }
        acked
    }

    fn reset(&mut self) {
        self.last_peer = 0;
        self.posted = 0;
        self.completed = false;
    }
}

struct World {
    region: Region,
    slot_off: [usize; 2],
    slots: [u32; 2],
    boxes: [Mailbox; 2],
    models: [Model; 2],
    hostile: bool,
}

impl World {
    fn role(i: usize) -> Role {
        if i == 0 {
            Role::Master
        } else {
            Role::Remote
        }
    }

    fn write_slot(&mut self, owner: usize, v: u32) {
        self.region.store_u32(self.slot_off[owner], v).unwrap();
        self.slots[owner] = v;
    }

    /// Memory matches the model: the two slots hold the modelled values and
    /// every other byte still holds the fill pattern.
    fn check_memory(&self) {
        let mut all = [0u8; LEN];
        self.region.read_bytes(0, &mut all).unwrap();
        for (i, &b) in all.iter().enumerate() {
            let in_slot = self.slot_off.iter().any(|&o| (o..o + 4).contains(&i));
            if !in_slot {
                assert_eq!(b, PATTERN, "byte {i} outside the slots was written");
            }
        }
        for i in 0..2 {
            let v = self.region.load_u32(self.slot_off[i]).unwrap();
            assert_eq!(v, self.slots[i], "slot of side {i}");
            assert_eq!(self.boxes[i].my_slot_value().unwrap(), v);
            assert_eq!(self.boxes[1 - i].peer_slot_value().unwrap(), v);
        }
    }

    fn poll(&mut self, i: usize) -> Option<Command> {
        let before = self.slots[i];
        let got = self.boxes[i].poll().unwrap();
        let want = self.models[i].poll(&mut self.slots);
        assert_eq!(got, want, "poll of side {i}");
        if got.is_some() {
            let (cmd, val) = decode(self.slots[i]);
            assert_eq!(cmd, CMD_ACK);
            if !self.hostile && decode(before).0 == CMD_ACK {
                assert_ne!(decode(before).1, val, "ACK value repeated");
            }
        } else {
            assert_eq!(
                self.slots[i], before,
                "poll without a command wrote its slot"
            );
        }
        got
    }

    fn ack_received(&mut self, i: usize) -> bool {
        let got = self.boxes[i].ack_received().unwrap();
        let want = self.models[i].ack_received(&mut self.slots);
        assert_eq!(got, want, "ack_received of side {i}");
        got
    }

    fn post(&mut self, i: usize, cmd: Command) -> bool {
        let got = self.boxes[i].post(cmd);
        let want = self.models[i].post(cmd, &mut self.slots);
        assert_eq!(got, want, "post of side {i}");
        got.is_ok()
    }
}

fuzz_target!(|input: Input| {
    let region = Region::new_heap(LEN);
    region.fill(0, LEN, PATTERN).unwrap();
    let table = usize::from(input.table_offset) % LEN;
    let slot_off = [table + CMD_MASTER_OFFSET, table + CMD_SLAVE_OFFSET];
    let usable = slot_off[1] + 4 <= LEN && table % 4 == 0;
    let a = Mailbox::new(region.clone(), Role::Master, table);
    let b = Mailbox::new(region.clone(), Role::Remote, table);
    let (a, b) = match (a, b) {
        (Ok(a), Ok(b)) => {
            assert!(usable);
            (a, b)
        }
        (Err(e), Err(_)) => {
            assert!(!usable);
            assert!(matches!(
                e,
                MailboxError::Shm(ShmError::OutOfBounds { .. } | ShmError::Misaligned { .. })
            ));
            return;
        }
        other => panic!("the two sides disagree on the slots: {other:?}"),
    };
    assert_eq!(
        (a.my_slot_offset(), a.peer_slot_offset()),
        (slot_off[0], slot_off[1])
    );
    assert_eq!(
        (b.my_slot_offset(), b.peer_slot_offset()),
        (slot_off[1], slot_off[0])
    );
    let pat = u32::from_le_bytes([PATTERN; 4]);
    let mut w = World {
        region,
        slot_off,
        slots: [pat, pat],
        boxes: [a, b],
        models: [Model::new(0, 1, pat), Model::new(1, 0, pat)],
        hostile: true, // the slots start with garbage
    };
    // Start from a clean table, as the master does before booting.
    w.write_slot(0, 0);
    w.write_slot(1, 0);
    for i in 0..2 {
        w.boxes[i] = Mailbox::new(w.region.clone(), World::role(i), table).unwrap();
        w.models[i] = Model::new(i, 1 - i, 0);
    }
    w.hostile = false;
    w.check_memory();

    for op in input.ops.iter().take(512) {
        match op {
            Op::Post(s, c) => {
                let i = *s as usize;
                w.post(i, c.get());
            }
            Op::Poll(s) => {
                w.poll(*s as usize);
            }
            Op::AckReceived(s) => {
                w.ack_received(*s as usize);
            }
            Op::WaitAck(s, words) => {
                let i = *s as usize;
                let peer_off = w.slot_off[1 - i];
                let region = w.region.clone();
                let words: Vec<u32> = words.iter().take(8).map(|x| x.get()).collect();
                let mut calls = 0;
                let got = w.boxes[i].wait_ack(|| {
                    if let Some(&v) = words.get(calls) {
                        region.store_u32(peer_off, v).unwrap();
                        calls += 1;
                        true
                    } else {
                        false
                    }
                });
                // Replay on the model.
                let m = &mut w.models[i];
                let want = if m.posted == 0 && !m.completed {
                    Err(MailboxError::NothingPending)
                } else {
                    let mut k = 0;
                    loop {
                        if m.ack_received(&mut w.slots) {
                            break Ok(());
                        }
                        if let Some(&v) = words.get(k) {
                            w.slots[1 - i] = v;
                            k += 1;
                            w.hostile = true;
                        } else {
                            break if m.ack_received(&mut w.slots) {
                                Ok(())
                            } else {
                                Err(MailboxError::Timeout)
                            };
                        }
                    }
                };
                assert_eq!(got, want, "wait_ack of side {i}");
                assert!(calls <= words.len());
            }
            Op::Reset(s) => {
                let i = *s as usize;
                w.boxes[i].reset();
                w.models[i].reset();
            }
            Op::Recreate(s) => {
                let i = *s as usize;
                w.boxes[i] = Mailbox::new(w.region.clone(), World::role(i), table).unwrap();
                w.models[i] = Model::new(i, 1 - i, w.slots[i]);
            }
            Op::Write(s, word) => {
                w.write_slot(*s as usize, word.get());
                w.hostile = true;
            }
            Op::Exchange(s, c) => {
                let i = *s as usize;
                let cmd = c.get();
                let fresh = w.models[1 - i].last_peer != cmd.to_word();
                if !w.post(i, cmd) {
                    continue;
                }
                let delivered = w.poll(1 - i);
                let acked = w.ack_received(i);
                w.poll(1 - i);
                if !w.hostile && fresh {
                    assert_eq!(delivered, Command::from_word(cmd.to_word()));
                    assert!(acked, "a clean exchange was not acknowledged");
                    assert_eq!(w.slots[i], 0, "the sender did not clear its slot");
                }
            }
        }
        w.check_memory();
    }
    // Decoding is total and consistent with encoding.
    for c in [CMD_READY, CMD_PANIC, CMD_RESET, CMD_STOP] {
        assert_eq!(decode(encode(c, 7)), (c, 7));
    }
});
