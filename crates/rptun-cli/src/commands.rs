//! Shell commands both sides of the simulator have: `rpmsg ping|dump|test`,
//! `rptun dump`, `ls`, `uname`, `ps`, `echo`, `sleep`, `log`.
#![forbid(unsafe_code)]

use std::io::Write;
use std::time::Duration;

use rptun::rpmsg::services::ping::{PingParams, PING_MIN_LEN};
use rptun_host::sim::node::NodeHandle;

use crate::shell::{arg, failed, CmdError, Shell};

/// The cpus a `<cpu|all>` argument names (checked against the node's links).
pub fn cpus(node: &NodeHandle, which: Option<&&str>) -> Result<Vec<String>, CmdError> {
    let which = which.ok_or("missing argument <cpu|all>")?;
    let known = node.call(|n| n.cpus()).map_err(failed)?;
    if *which == "all" {
        if known.is_empty() {
            return Err(failed("no links yet"));
        }
        return Ok(known);
    }
    if known.iter().any(|k| k == which) {
        Ok(vec![which.to_string()])
    } else {
        Err(failed(format!(
            "no link to cpu `{which}`; known: {}",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )))
    }
}

fn number(s: &str, name: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("<{name}> must be a number, got `{s}`"))
}

/// `rpmsg ping|dump|test` and `rptun dump`.
pub fn add_rpmsg(sh: &mut Shell<'_>, node: &NodeHandle) {
    let n = node.clone();
    sh.add(
        "rpmsg ping",
        "<cpu|all> <times> <len> <cmd> <sleep_ms>",
        "ping a cpu's rpmsg-ping endpoint (cmd bits: 1 ack, 2 check data, 4 random length)",
        move |a, o| {
            let list = cpus(&n, a.first())?;
            let times: u32 = arg(a, 1, "times")?;
            let len: usize = arg(a, 2, "len")?;
            let cmd = number(a.get(3).ok_or("missing argument <cmd>")?, "cmd")?;
            let sleep_ms: u64 = arg(a, 4, "sleep_ms")?;
            if times == 0 {
                return Err("<times> must be at least 1".into());
            }
            if len < PING_MIN_LEN {
                return Err(format!(
                    "<len> must be at least {PING_MIN_LEN} (a 16-byte ping header and one data \
                     byte)"
                )
                .into());
            }
            if cmd > 0xf {
                return Err(format!(
                    "<cmd> {cmd:#x} has unknown bits; use 0..=7 (1 ack, 2 check, 4 random length)"
                )
                .into());
            }
            let p = PingParams::new(times, len)
                .ack(cmd & 1 != 0)
                .check(cmd & 2 != 0)
                .random_len(cmd & 4 != 0)
                .sleep(Duration::from_millis(sleep_ms));
            let many = a.first() == Some(&"all");
            for cpu in list {
                if many {
                    let _ = writeln!(o, "cpu {cpu}:");
                }
                let c = cpu.clone();
                let rep = n.call(move |n| n.ping(&c, &p)).map_err(failed)?;
                let _ = write!(o, "{}", rep.map_err(failed)?);
            }
            Ok(())
        },
    );
    let n = node.clone();
    sh.add(
        "rpmsg dump",
        "<cpu|all>",
        "show a link: cpu names, vring indices, endpoints, buffers",
        move |a, o| {
            let which = a.first().copied().unwrap_or("all");
            let r = if which == "all" {
                n.call(|n| n.dump(None))
            } else {
                cpus(&n, Some(&which))?;
                let c = which.to_string();
                n.call(move |n| n.dump(Some(&c)))
            };
            let text = r.map_err(failed)?.map_err(failed)?;
            let _ = write!(o, "{text}");
            Ok(())
        },
    );
    let n = node.clone();
    sh.add(
        "rpmsg test",
        "<cpu|all>",
        "send every TX buffer to a cpu's rpmsg-test endpoint, which holds and releases them",
        move |a, o| {
            for cpu in cpus(&n, a.first())? {
                let line = n
                    .call(move |n| n.test(&cpu))
                    .map_err(failed)?
                    .map_err(failed)?;
                let _ = writeln!(o, "{line}");
            }
            Ok(())
        },
    );
    let n = node.clone();
    sh.add(
        "rptun dump",
        "[cpu|all]",
        "show the remoteproc side: state, boot words, vdevs",
        move |_a, o| {
            let text = n.call(|n| n.rptun_dump()).map_err(failed)?;
            let _ = write!(o, "{text}");
            Ok(())
        },
    );
}

/// `ls`, `uname`, `ps`, `echo`, `sleep`, `log`.
pub fn add_system(sh: &mut Shell<'_>, node: &NodeHandle, cpu: &str, config: &str) {
    let n = node.clone();
    sh.add("ls", "[/dev]", "list the simulated devices", move |a, o| {
        let path = a.first().copied().unwrap_or("/dev");
        let path = path.trim_end_matches('/');
        if path != "/dev" {
            return Err(failed(format!(
                "`{path}`: only /dev is simulated here; try `ls /dev`"
            )));
        }
        let devs = n.call(|n| n.devices()).map_err(failed)?;
        let _ = writeln!(o, "/dev:");
        for d in devs {
            let _ = writeln!(o, " {d}");
        }
        Ok(())
    });
    let (cpu_s, config_s) = (cpu.to_string(), config.to_string());
    sh.add("uname", "[-a]", "print system information", move |a, o| {
        match a.first().copied() {
            None => {
                let _ = writeln!(o, "rptun");
            }
            Some("-a") => {
                let _ = writeln!(
                    o,
                    "rptun {cpu_s} {} {}-{} sim {config_s}",
                    env!("CARGO_PKG_VERSION"),
                    std::env::consts::OS,
                    std::env::consts::ARCH
                );
            }
            Some(x) => return Err(format!("unknown option `{x}`; use `uname -a`").into()),
        }
        Ok(())
    });
    sh.add("ps", "", "list the threads rptun runs", |_a, o| {
        let _ = writeln!(o, "{:>7} {:<5} COMMAND", "TID", "STATE");
        let mut tasks: Vec<(u32, String, String)> = Vec::new();
        let dir = std::fs::read_dir("/proc/self/task").map_err(failed)?;
        for e in dir.flatten() {
            let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // state is the first field after the ")" closing the name
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next())
                .unwrap_or("?")
                .to_string();
            tasks.push((tid, state, comm.trim().to_string()));
        }
        tasks.sort();
        for (tid, state, comm) in tasks {
            let _ = writeln!(o, "{tid:>7} {state:<5} {comm}");
        }
        Ok(())
    });
    sh.add("echo", "[words...]", "print the words", |a, o| {
        let _ = writeln!(o, "{}", a.join(" "));
        Ok(())
    });
    sh.add("sleep", "<seconds>", "wait (fractions allowed)", |a, _o| {
        let s: f64 = arg(a, 0, "seconds")?;
        if !(0.0..=3600.0).contains(&s) {
            return Err("<seconds> must be between 0 and 3600".into());
        }
        std::thread::sleep(Duration::from_secs_f64(s));
        Ok(())
    });
    sh.add(
        "log",
        "<text...>",
        "write a line to the system log",
        |a, _o| {
            if a.is_empty() {
                return Err("missing <text>".into());
            }
            log::info!("{}", a.join(" "));
            Ok(())
        },
    );
}

/// Prints `data` as `hexdump` does: offset, 16 bytes in hex, ASCII.
pub fn hexdump(o: &mut dyn Write, path: &str, data: &[u8]) {
    let _ = writeln!(o, "{path} at 00000000:");
    for (i, chunk) in data.chunks(16).enumerate() {
        let mut hex = String::new();
        for b in chunk {
            hex.push_str(&format!("{b:02x} "));
        }
        let ascii: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        let _ = writeln!(o, "{:04x}: {hex:<48}{ascii}", i * 16);
    }
}

/// Parses `count=N` (default 64, at most 64 KiB).
pub fn count_arg(a: &[&str]) -> Result<usize, String> {
    let mut count = 64usize;
    for w in a {
        match w.strip_prefix("count=") {
            Some(v) => {
                count = v
                    .parse()
                    .map_err(|_| format!("count must be a number, got `{v}`"))?
            }
            None => return Err(format!("unknown argument `{w}`; use count=N")),
        }
    }
    if count == 0 || count > 65536 {
        return Err("count must be 1..=65536".into());
    }
    Ok(count)
}
