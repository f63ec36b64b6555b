//! Test support shared by the reference-peer suites (`openamp.rs`,
//! `nuttx_sim.rs`): finding the oracles, python3, and child processes whose
//! output is collected and which are killed when a case fails.

#![allow(dead_code)] // each suite uses its own subset

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `tests/oracles/<sub>` (or `$RPTUN_ORACLES/<sub>`), checked to hold
/// `files`. Fails (never skips) when one is missing; `what` names the
/// peers in the message (e.g. "OpenAMP reference peer").
pub fn oracles(sub: &str, files: &[&str], what: &str) -> PathBuf {
    let root = match std::env::var_os("RPTUN_ORACLES") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/oracles"),
    };
    let dir = root.join(sub);
    for f in files {
        assert!(
            dir.join(f).is_file(),
            "the {what} {f} is missing from {}: restore tests/oracles/{sub}/ in the \
             repository, or set RPTUN_ORACLES to a directory that holds {sub}/{f}",
            dir.display()
        );
    }
    dir
}

/// The python3 command; fails (never skips) when it does not run.
pub fn python3() -> &'static str {
    let ok = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "python3 is needed to run the reference peers in tests/oracles (standard library \
         only); install it"
    );
    "python3"
}

/// A child process whose stdout and stderr are collected; killed on drop.
pub struct Proc {
    pub name: &'static str,
    child: Child,
    out: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` (stdin closed) and collects its output.
    pub fn spawn(name: &'static str, mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let out = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for pipe in pipes {
            let out = out.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                    o.push_str(&line);
                    o.push('\n');
                }
            }));
        }
        Proc {
            name,
            child,
            out,
            readers,
            status: None,
        }
    }

    /// Starts `python3 -u script args`.
    pub fn python(name: &'static str, script: &Path, args: &[&str]) -> Proc {
        let mut cmd = Command::new(python3());
        cmd.arg("-u").arg(script).args(args);
        Proc::spawn(name, cmd)
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The exit status if the process has ended (collecting the rest of
    /// its output), without waiting.
    pub fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
            }
        }
        self.status
    }

    /// Waits until `pattern` appears in the output (or the process exits,
    /// or the deadline passes); true if it appeared.
    pub fn wait_for_line(&mut self, pattern: &str, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            if self.output().contains(pattern) {
                return true;
            }
            if self.poll().is_some() {
                return self.output().contains(pattern);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for every process to exit successfully; as soon as one fails, or
/// at the deadline, panics with all the output (the `Proc`s still running
/// are killed when dropped).
pub fn finish(procs: &mut [&mut Proc], deadline: Instant) -> Vec<String> {
    let failed = loop {
        let mut running = false;
        let mut failed = None;
        for p in procs.iter_mut() {
            match p.poll() {
                Some(s) if !s.success() => {
                    failed = failed.or(Some(format!("{} exited with {s}", p.name)))
                }
                Some(_) => {}
                None => running = true,
            }
        }
        if failed.is_some() || !running {
            break failed;
        }
        if Instant::now() >= deadline {
            let late: Vec<&str> = procs
                .iter()
                .filter(|p| p.status.is_none())
                .map(|p| p.name)
                .collect();
            break Some(format!("{} did not finish in time", late.join(", ")));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let outs: Vec<String> = procs.iter().map(|p| p.output()).collect();
    if let Some(mut msg) = failed {
        for (p, o) in procs.iter().zip(&outs) {
            msg.push_str(&format!("\n--- {} output ---\n{o}", p.name));
        }
        panic!("{msg}");
    }
    outs
}

/// Panics with the output unless `out` contains `want`.
pub fn assert_has(out: &str, who: &str, want: &str) {
    assert!(
        out.contains(want),
        "{who} did not print {want:?}; it printed:\n{out}"
    );
}
