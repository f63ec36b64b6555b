//! Log lines of the simulator: `[server] ...` on stderr; the proxy's go to
//! the server over rpmsg syslog once the link is up (and to stderr before).
#![forbid(unsafe_code)]

use std::sync::Arc;

use log::{Level, LevelFilter, Log, Metadata, Record};
use rptun_host::sim::syslog::SyslogQueue;

struct Logger {
    who: String,
    level: LevelFilter,
    queue: Option<Arc<SyslogQueue>>,
}

/// The level from `RPTUN_LOG` (error, warn, info, debug, trace; default
/// info).
fn level_from_env() -> LevelFilter {
    match std::env::var("RPTUN_LOG").ok().as_deref() {
        Some("error") => LevelFilter::Error,
        Some("warn") => LevelFilter::Warn,
        Some("debug") => LevelFilter::Debug,
        Some("trace") => LevelFilter::Trace,
        Some("off") => LevelFilter::Off,
        _ => LevelFilter::Info,
    }
}

/// One line without the `[cpu]` prefix.
fn line(record: &Record) -> String {
    match record.level() {
        Level::Info => format!("{}", record.args()),
        Level::Warn => format!("warning: {}", record.args()),
        Level::Error => format!("error: {}", record.args()),
        l => format!(
            "{}: {}: {}",
            l.as_str().to_lowercase(),
            record.target(),
            record.args()
        ),
    }
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        // The core library's progress lines (links up, commands acked...)
        // repeat what the simulator says itself: shown from debug on.
        let core = [
            "rptun::rpmsg",
            "rptun::remoteproc",
            "rptun::virtio",
            "rptun::devices",
        ]
        .iter()
        .any(|p| m.target().starts_with(p));
        let level = if core && self.level == LevelFilter::Info {
            LevelFilter::Warn
        } else {
            self.level
        };
        m.level() <= level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = line(record);
        match &self.queue {
            // Lines about the syslog itself never travel over it.
            Some(q) if !record.target().contains("syslog") => q.log(&text),
            _ => line_to_stderr(&format!("[{}] {text}", self.who)),
        }
    }

    fn flush(&self) {}
}

/// Writes one line to stderr in a single `write`: the server and the proxy
/// share the terminal (or pipe), and a line written piecewise could be torn
/// by the other process's.
pub fn line_to_stderr(line: &str) {
    use std::io::Write;
    let mut b = String::with_capacity(line.len() + 1);
    b.push_str(line);
    b.push('\n');
    let _ = std::io::stderr().lock().write_all(b.as_bytes());
}

/// Installs the logger of `who`; with `queue`, lines go through it (over
/// rpmsg once connected).
pub fn init(who: &str, queue: Option<Arc<SyslogQueue>>) {
    let level = level_from_env();
    let _ = log::set_boxed_logger(Box::new(Logger {
        who: who.to_string(),
        level,
        queue,
    }));
    log::set_max_level(level);
}
