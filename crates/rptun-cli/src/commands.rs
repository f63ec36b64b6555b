//! Shell commands shared by the simulator's two sides and `rptun ivshmem`:
//! `rpmsg ping|dump|test`, `rptun dump`, `ls`, `uname`, `ps`, `echo`,
//! `sleep`, `log`; the master's `rptun start|stop|reset|panic` and
//! `hexdump /dev/random*`.
#![forbid(unsafe_code)]

use std::io::Write;
use std::time::Duration;

use rptun::rpmsg::services::ping::{PingParams, PING_MIN_LEN};
use rptun_host::sim::node::{LinkInfo, NodeHandle, PORT_TEST_NOTE};

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

/// The links a `<cpu|all>` argument names, each with the heading `rpmsg
/// ping all` prints for it (`cpu proxy2:`; the transport's role is added
/// when two links lead to cpus of the same name, as on the proxy).
pub fn links(node: &NodeHandle, which: Option<&&str>) -> Result<Vec<(LinkInfo, String)>, CmdError> {
    let which = which.ok_or("missing argument <cpu|all>")?;
    if *which != "all" {
        cpus(node, Some(which))?;
        let c = which.to_string();
        let l = node
            .call(move |n| n.links().into_iter().find(|l| l.cpu == c))
            .map_err(failed)?
            .ok_or_else(|| failed(format!("no link to cpu `{which}`")))?;
        return Ok(vec![(l, format!("cpu {which}"))]);
    }
    let all = node.call(|n| n.links()).map_err(failed)?;
    if all.is_empty() {
        return Err(failed("no links yet"));
    }
    Ok(all
        .iter()
        .map(|l| {
            let twins = all.iter().filter(|o| o.cpu == l.cpu).count() > 1;
            let head = if twins {
                format!("cpu {} ({})", l.cpu, l.role)
            } else {
                format!("cpu {}", l.cpu)
            };
            (l.clone(), head)
        })
        .collect())
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
            let list = links(&n, a.first())?;
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
            // With `all`, a link that fails does not hide the others' reports.
            let mut failures = Vec::new();
            for (l, head) in list {
                let id = l.id;
                if many {
                    let _ = writeln!(o, "{head}:");
                }
                let rep = n.call(move |n| n.ping_link(id, &p)).map_err(failed)?;
                match rep {
                    Ok(r) => {
                        let _ = write!(o, "{r}");
                    }
                    Err(e) if many => {
                        let _ = writeln!(o, "failed: {e}");
                        failures.push(head);
                    }
                    Err(e) => return Err(failed(e)),
                }
            }
            if failures.is_empty() {
                Ok(())
            } else {
                Err(failed(format!(
                    "failed on {} (see above)",
                    failures.join(", ")
                )))
            }
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
            let many = a.first() == Some(&"all");
            for (l, _) in links(&n, a.first())? {
                if many && l.role == "port" {
                    let _ = writeln!(o, "rpmsg test {}: skipped ({})", l.cpu, PORT_TEST_NOTE);
                    continue;
                }
                let id = l.id;
                let line = n
                    .call(move |n| n.test_link(id))
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

/// `rptun start|stop|reset|panic`: the master's commands that drive the
/// remoteproc link to the remote cpu `proxy`. `start` brings the remote up
/// (spawns the simulator's proxy, boots QEMU...) and returns the line to
/// print.
pub fn add_rptun<'a>(
    sh: &mut Shell<'a>,
    handle: &NodeHandle,
    mut start: impl FnMut() -> Result<String, String> + 'a,
) {
    let which = |a: &[&str]| -> Result<(), CmdError> {
        match a.first().copied() {
            Some("proxy") | Some("all") => Ok(()),
            Some(c) => Err(failed(format!("no remote cpu `{c}`; known: proxy"))),
            None => Err("missing argument <cpu|all>".into()),
        }
    };
    sh.add(
        "rptun start",
        "<cpu|all>",
        "start the remote cpu (spawns the proxy, or boots QEMU, if it is not running)",
        move |a, o| {
            which(a)?;
            let msg = start().map_err(failed)?;
            let _ = writeln!(o, "{msg}");
            Ok(())
        },
    );
    let node = handle.clone();
    sh.add(
        "rptun stop",
        "<cpu|all>",
        "stop the remote cpu (vdevs removed, STOP through the mailbox)",
        move |a, o| {
            which(a)?;
            let acked = node
                .call(|n| n.stop_link(Duration::from_secs(2)))
                .map_err(failed)?
                .map_err(failed)?;
            if acked {
                let _ = writeln!(o, "proxy stopped");
            } else {
                let _ = writeln!(
                    o,
                    "proxy stopped (it did not acknowledge STOP within 2 s: is it running?)"
                );
            }
            Ok(())
        },
    );
    let node = handle.clone();
    sh.add(
        "rptun reset",
        "<cpu> <val>",
        "reset the remote cpu with a value (RESET through the mailbox); it reboots",
        move |a, o| {
            if a.first() == Some(&"all") {
                return Err("reset takes one cpu: `rptun reset proxy <val>`".into());
            }
            which(a)?;
            let val: u16 = arg(a, 1, "val")?;
            let before = node.call(|n| n.session()).map_err(failed)?;
            let acked = node
                .call(move |n| n.reset_link(val, Duration::from_secs(2)))
                .map_err(failed)?
                .map_err(failed)?;
            if !acked {
                return Err(failed(
                    "proxy did not acknowledge RESET within 2 s; is it running? (`rptun dump`)",
                ));
            }
            let back = node
                .call(move |n| {
                    n.wait_until(Duration::from_secs(5), |n| {
                        n.peer_ready() && n.session() != before
                    })
                })
                .map_err(failed)?;
            if back {
                let _ = writeln!(o, "proxy reset (value {val}); link up again");
                Ok(())
            } else {
                Err(failed(
                    "proxy acknowledged RESET but the link did not come back within 5 s; see \
                     `rptun dump`",
                ))
            }
        },
    );
    let node = handle.clone();
    sh.add(
        "rptun panic",
        "<cpu>",
        "make the remote cpu panic (PANIC through the mailbox); it halts",
        move |a, o| {
            if a.first() == Some(&"all") {
                return Err("panic takes one cpu: `rptun panic proxy`".into());
            }
            which(a)?;
            node.call(|n| n.panic_link())
                .map_err(failed)?
                .map_err(failed)?;
            let _ = writeln!(
                o,
                "proxy panicked; the link is down until `rptun start proxy`"
            );
            Ok(())
        },
    );
}

/// `hexdump /dev/random|/dev/random1|/dev/zero [count=N]`: entropy from the
/// remote's virtio-rng devices.
pub fn add_hexdump(sh: &mut Shell<'_>, node: &NodeHandle) {
    let n = node.clone();
    sh.add(
        "hexdump",
        "<file> [count=N]",
        "dump bytes of /dev/random (rng0) or /dev/random1 (rng1): entropy from the proxy",
        move |a, o| {
            let path = a.first().copied().ok_or("missing argument <file>")?;
            let count = count_arg(&a[1..])?;
            let data = match path {
                "/dev/random" | "/dev/random1" => {
                    let index = usize::from(path == "/dev/random1");
                    n.call(move |n| n.read_random(index, count))
                        .map_err(failed)?
                        .map_err(failed)?
                }
                "/dev/zero" => vec![0u8; count],
                other => {
                    return Err(format!(
                        "no such device `{other}`; try /dev/random or /dev/random1 (`ls /dev`)"
                    )
                    .into())
                }
            };
            hexdump(o, path, &data);
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
