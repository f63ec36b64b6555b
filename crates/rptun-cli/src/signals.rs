//! Ctrl-C and friends: SIGINT, SIGTERM and SIGHUP set a flag that the
//! simulator's loops check (signal-safe: the handler only stores to an
//! atomic). A second SIGINT while the first is being handled exits at once.
#![forbid(unsafe_code)]

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// Installs the handlers; the flag turns true on the first signal.
pub fn install() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        // Exit with 130 on a second signal if the first did not end us.
        signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone())
            .context("cannot install the signal handlers")?;
        signal_hook::flag::register(sig, flag.clone())
            .context("cannot install the signal handlers")?;
    }
    Ok(flag)
}
