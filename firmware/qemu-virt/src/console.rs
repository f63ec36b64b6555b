//! The console: `print!`/`println!` on the PL011 UART and a `log` logger
//! that prints `[proxy] message` lines.
#![forbid(unsafe_code)]

use core::fmt::{self, Write};

use crate::hw::uart;

/// Prefix of every firmware line, so a host can tell them from its own.
pub const PREFIX: &str = "[proxy]";

/// Prints to the UART (used by [`print!`](crate::print) and
/// [`println!`](crate::println)).
pub fn _print(args: fmt::Arguments<'_>) {
    // The UART never reports an error.
    let _ = uart::Console.write_fmt(args);
}

/// Prints to the UART console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::_print(format_args!($($arg)*))
    };
}

/// Prints a line to the UART console.
#[macro_export]
macro_rules! println {
    () => {
        $crate::print!("\n")
    };
    ($($arg:tt)*) => {
        $crate::console::_print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

struct UartLogger;

impl log::Log for UartLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match record.level() {
            log::Level::Info => crate::println!("{PREFIX} {}", record.args()),
            level => crate::println!("{PREFIX} {level}: {}", record.args()),
        }
    }

    fn flush(&self) {}
}

static LOGGER: UartLogger = UartLogger;

/// Installs the UART logger at [`LOG_LEVEL`]. Call once, after the MMU is
/// on: `set_logger` uses atomics.
pub fn init_logger() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LOG_LEVEL);
    }
}

/// The most verbose level that is printed.
pub const LOG_LEVEL: log::LevelFilter = log::LevelFilter::Info;
