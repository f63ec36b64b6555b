//! An rpmsg tty, as NuttX's `uart_rpmsg`: a byte stream each way over the
//! endpoint `"rpmsg-tty" + device name` (`"rpmsg-ttyproxy"` for
//! `/dev/ttyproxy`).
//!
//! ```text
//! header (little-endian, 16 B): u32 command:31 | response:1 << 31, i32 result, u64 cookie
//! WRITE (command 0): header, u32 count, u32 reserved, u8 data[count]
//! WAKEUP (command 1): header only
//! ```
//!
//! Both ends create the endpoint with the same name; the name service binds
//! them. A WRITE with a non-zero cookie asks for a response (the header with
//! the response bit and `result` = bytes taken); ours send cookie 0.
#![forbid(unsafe_code)]

use std::sync::Arc;

use rptun::rpmsg::{
    EndpointConfig, EndpointHandler, EndpointId, Link, LinkCtx, LinkId, Received, RpmsgError,
    RpmsgTransport, Service, ADDR_ANY,
};

/// Prefix of the endpoint name (NuttX's `UART_RPMSG_EPT_PREFIX`).
pub const TTY_EPT_PREFIX: &str = "rpmsg-tty";
/// Command: data follows.
pub const TTY_WRITE: u32 = 0;
/// Command: the reader has room again.
pub const TTY_WAKEUP: u32 = 1;
/// Header bit: this is a response.
pub const TTY_RESPONSE: u32 = 1 << 31;
/// Bytes before the data of a WRITE message.
pub const TTY_WRITE_HEADER_LEN: usize = 24;

/// Encodes a WRITE carrying `data` (cookie 0: no response wanted).
pub fn encode_write(data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(TTY_WRITE_HEADER_LEN + data.len());
    m.extend_from_slice(&TTY_WRITE.to_le_bytes());
    m.extend_from_slice(&0i32.to_le_bytes());
    m.extend_from_slice(&0u64.to_le_bytes());
    m.extend_from_slice(&(data.len() as u32).to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m.extend_from_slice(data);
    m
}

/// A decoded tty message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtyMsg<'a> {
    /// Data; `cookie` non-zero asks for a response.
    Write {
        /// The bytes (count clamped to what arrived).
        data: &'a [u8],
        /// The sender's cookie.
        cookie: u64,
    },
    /// Anything else (wakeups, responses, unknown commands).
    Other,
}

/// Decodes a tty message; `None` when it is too short for a header.
pub fn decode(msg: &[u8]) -> Option<TtyMsg<'_>> {
    if msg.len() < 16 {
        return None;
    }
    let word = u32::from_le_bytes(msg[0..4].try_into().ok()?);
    let cookie = u64::from_le_bytes(msg[8..16].try_into().ok()?);
    if word & TTY_RESPONSE != 0 || word != TTY_WRITE || msg.len() < TTY_WRITE_HEADER_LEN {
        return Some(TtyMsg::Other);
    }
    let count = u32::from_le_bytes(msg[16..20].try_into().ok()?) as usize;
    let data = &msg[TTY_WRITE_HEADER_LEN..];
    Some(TtyMsg::Write {
        data: &data[..count.min(data.len())],
        cookie,
    })
}

/// Where received bytes go.
pub type TtySink = Arc<dyn Fn(&[u8]) + Send + Sync>;

struct TtyEpt {
    sink: TtySink,
}

impl<T: RpmsgTransport + 'static> EndpointHandler<T> for TtyEpt {
    fn on_message(&mut self, ctx: &mut LinkCtx<'_, T>, msg: Received<'_>) {
        let bytes = msg.to_vec();
        if let Some(TtyMsg::Write { data, cookie }) = decode(&bytes) {
            (self.sink)(data);
            if cookie != 0 {
                let mut rsp = bytes[..TTY_WRITE_HEADER_LEN].to_vec();
                rsp[0..4].copy_from_slice(&(TTY_WRITE | TTY_RESPONSE).to_le_bytes());
                rsp[4..8].copy_from_slice(&(data.len() as i32).to_le_bytes());
                let _ = ctx.reply(&msg, &rsp);
            }
        }
    }
}

/// The tty service: one endpoint named `"rpmsg-tty" + dev` on every link.
pub struct TtyService {
    name: String,
    sink: TtySink,
    epts: Vec<(LinkId, EndpointId)>,
}

impl std::fmt::Debug for TtyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtyService")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TtyService {
    /// The tty of device `dev` (`"proxy"` → endpoint `"rpmsg-ttyproxy"`),
    /// handing received bytes to `sink`.
    pub fn new(dev: &str, sink: TtySink) -> TtyService {
        TtyService {
            name: format!("{TTY_EPT_PREFIX}{dev}"),
            sink,
            epts: Vec::new(),
        }
    }

    /// The endpoint name.
    pub fn endpoint_name(&self) -> &str {
        &self.name
    }

    /// Its endpoint on a link.
    pub fn endpoint(&self, link: LinkId) -> Option<EndpointId> {
        self.epts.iter().find(|(l, _)| *l == link).map(|(_, e)| *e)
    }
}

/// True when the tty endpoint on `link` is bound to the peer's.
pub fn is_bound<T: RpmsgTransport + 'static>(link: &Link<T>, ept: EndpointId) -> bool {
    link.endpoint(ept).is_some_and(|e| e.dest != ADDR_ANY)
}

/// Sends one WRITE of `data` (at most the link's payload minus the header)
/// without blocking; returns the bytes sent.
pub fn try_write<T: RpmsgTransport + 'static>(
    link: &mut Link<T>,
    ept: EndpointId,
    data: &[u8],
) -> Result<usize, RpmsgError> {
    let room = link.max_payload().saturating_sub(TTY_WRITE_HEADER_LEN);
    let n = data.len().min(room);
    link.trysend(ept, &encode_write(&data[..n]))?;
    Ok(n)
}

impl<T: RpmsgTransport + 'static> Service<T> for TtyService {
    fn device_created(&mut self, link: &mut Link<T>, id: LinkId) {
        let h = TtyEpt {
            sink: self.sink.clone(),
        };
        match link.create_endpoint(EndpointConfig::new(&self.name), h) {
            Ok(e) => self.epts.push((id, e)),
            Err(e) => log::warn!("{}: cannot create the endpoint: {e}", self.name),
        }
    }

    fn device_destroyed(&mut self, link: &mut Link<T>, id: LinkId) {
        self.epts.retain(|&(l, e)| {
            if l == id {
                let _ = link.destroy_endpoint(e);
            }
            l != id
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_bytes_are_nuttx_s() {
        let m = encode_write(b"ls\n");
        let mut want = vec![0u8; 24];
        want[16] = 3;
        want.extend_from_slice(b"ls\n");
        assert_eq!(m, want);
        assert_eq!(
            decode(&m),
            Some(TtyMsg::Write {
                data: b"ls\n",
                cookie: 0
            })
        );
        let mut rsp = m.clone();
        rsp[3] = 0x80;
        assert_eq!(decode(&rsp), Some(TtyMsg::Other));
        let mut long = m.clone();
        long[16] = 99;
        assert_eq!(
            decode(&long),
            Some(TtyMsg::Write {
                data: b"ls\n",
                cookie: 0
            })
        );
        assert_eq!(decode(&m[..10]), None);
    }
}
