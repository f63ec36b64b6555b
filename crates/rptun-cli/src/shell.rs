//! An NSH-style line shell: a table of commands, `help`, scripts.
//!
//! Commands are matched on their leading words (`rpmsg ping`, `ls`), so a
//! command table reads like NuttX's. Every bad command or argument prints one
//! line that says what went wrong and what to type instead.

use std::io::Write;

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdError {
    /// The arguments were wrong: the shell prints the message and the usage.
    Usage(String),
    /// The command ran and failed: the shell prints the message (which says
    /// what to do).
    Failed(String),
}

impl From<String> for CmdError {
    fn from(s: String) -> Self {
        CmdError::Usage(s)
    }
}

impl From<&str> for CmdError {
    fn from(s: &str) -> Self {
        CmdError::Usage(s.to_string())
    }
}

/// A runtime failure (printed without the usage line).
pub fn failed(s: impl std::fmt::Display) -> CmdError {
    CmdError::Failed(s.to_string())
}

/// What a command handler gets: its arguments (after the command words) and
/// the output to print to.
pub type Handler<'a> = Box<dyn FnMut(&[&str], &mut dyn Write) -> Result<(), CmdError> + 'a>;

/// One shell command.
pub struct Command<'a> {
    /// Its words, e.g. `["rpmsg", "ping"]`.
    pub words: Vec<String>,
    /// Argument synopsis, e.g. `<cpu|all> <times> <len> <cmd> <sleep_ms>`.
    pub usage: &'static str,
    /// One line of help.
    pub help: &'static str,
    /// The handler.
    pub handler: Handler<'a>,
}

/// Whether the shell should keep reading lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// `exit` or `quit` was typed.
    Exit,
}

/// A table of commands.
#[derive(Default)]
pub struct Shell<'a> {
    commands: Vec<Command<'a>>,
    errors: usize,
}

impl<'a> Shell<'a> {
    /// An empty shell (with the built-in `help` and `exit`).
    pub fn new() -> Self {
        Shell {
            commands: Vec::new(),
            errors: 0,
        }
    }

    /// Adds a command.
    pub fn add(
        &mut self,
        words: &str,
        usage: &'static str,
        help: &'static str,
        handler: impl FnMut(&[&str], &mut dyn Write) -> Result<(), CmdError> + 'a,
    ) {
        let words: Vec<String> = words.split_whitespace().map(str::to_string).collect();
        self.commands.push(Command {
            words,
            usage,
            help,
            handler: Box::new(handler),
        });
    }

    /// Prints the command list.
    pub fn help(&self, out: &mut dyn Write) {
        let heads: Vec<String> = self
            .commands
            .iter()
            .map(|c| {
                format!("{} {}", c.words.join(" "), c.usage)
                    .trim_end()
                    .to_string()
            })
            .collect();
        let w = heads
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .clamp(8, 56);
        let _ = writeln!(out, "Commands:");
        let _ = writeln!(out, "  {:<w$}  this list", "help");
        for (c, head) in self.commands.iter().zip(&heads) {
            let _ = writeln!(out, "  {head:<w$}  {}", c.help);
        }
        let _ = writeln!(out, "  {:<w$}  leave the shell", "exit");
    }

    /// How many commands failed or were not understood so far.
    pub fn errors(&self) -> usize {
        self.errors
    }

    /// Runs one line (which may hold several commands separated by `;`).
    pub fn run_line(&mut self, line: &str, out: &mut dyn Write) -> Flow {
        for part in line.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            if words.is_empty() || words[0].starts_with('#') {
                continue;
            }
            match words[0] {
                "exit" | "quit" => return Flow::Exit,
                "help" | "?" => {
                    self.help(out);
                    continue;
                }
                _ => {}
            }
            // Longest match on leading words.
            let best = self
                .commands
                .iter_mut()
                .filter(|c| {
                    c.words.len() <= words.len() && c.words.iter().zip(&words).all(|(a, b)| a == b)
                })
                .max_by_key(|c| c.words.len());
            match best {
                Some(c) => {
                    let n = c.words.len();
                    match (c.handler)(&words[n..], out) {
                        Ok(()) => {}
                        Err(CmdError::Usage(e)) => {
                            self.errors += 1;
                            let _ = writeln!(
                                out,
                                "{}: {e} (usage: {} {})",
                                c.words.join(" "),
                                c.words.join(" "),
                                c.usage
                            );
                        }
                        Err(CmdError::Failed(e)) => {
                            self.errors += 1;
                            let _ = writeln!(out, "{}: {e}", c.words.join(" "));
                        }
                    }
                }
                None => {
                    self.errors += 1;
                    let similar: Vec<String> = self
                        .commands
                        .iter()
                        .filter(|c| c.words[0] == words[0])
                        .map(|c| format!("{} {}", c.words.join(" "), c.usage))
                        .collect();
                    if similar.is_empty() {
                        let _ = writeln!(
                            out,
                            "{}: command not found; type `help` for the list",
                            words[0]
                        );
                    } else {
                        let _ = writeln!(
                            out,
                            "{}: unknown subcommand `{}`; try: {}",
                            words[0],
                            words.get(1).copied().unwrap_or(""),
                            similar.join(" | ")
                        );
                    }
                }
            }
        }
        let _ = out.flush();
        Flow::Continue
    }
}

/// Parses a number argument with a message that says which one was bad.
pub fn arg<T: std::str::FromStr>(args: &[&str], i: usize, name: &str) -> Result<T, String> {
    let s = args
        .get(i)
        .ok_or_else(|| format!("missing argument <{name}>"))?;
    s.parse()
        .map_err(|_| format!("<{name}> must be a number, got `{s}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(sh: &mut Shell, line: &str) -> (Flow, String) {
        let mut out = Vec::new();
        let f = sh.run_line(line, &mut out);
        (f, String::from_utf8(out).unwrap())
    }

    #[test]
    fn dispatches_on_longest_words_and_reports_mistakes() {
        let mut sh = Shell::new();
        sh.add("rpmsg ping", "<cpu> <n>", "ping", |a, o| {
            let n: u32 = arg(a, 1, "n")?;
            writeln!(o, "ping {} {n}", a[0]).unwrap();
            Ok(())
        });
        sh.add("rpmsg dump", "<cpu>", "dump", |a, o| {
            if a.first() == Some(&"down") {
                return Err(failed("link down; type `rptun start down`"));
            }
            writeln!(o, "dump").unwrap();
            Ok(())
        });
        assert_eq!(run(&mut sh, "rpmsg ping proxy 3").1, "ping proxy 3\n");
        assert_eq!(
            run(&mut sh, "rpmsg dump all; rpmsg ping all 1").1,
            "dump\nping all 1\n"
        );
        let (_, o) = run(&mut sh, "rpmsg ping proxy x");
        assert!(o.contains("<n> must be a number, got `x`"), "{o}");
        assert!(o.contains("usage: rpmsg ping <cpu> <n>"), "{o}");
        let (_, o) = run(&mut sh, "rpmsg pong");
        assert!(o.contains("unknown subcommand `pong`"), "{o}");
        assert!(o.contains("rpmsg ping <cpu> <n>"), "{o}");
        let (_, o) = run(&mut sh, "frob");
        assert!(o.contains("frob: command not found; type `help`"), "{o}");
        assert_eq!(sh.errors(), 3);
        let (_, o) = run(&mut sh, "rpmsg dump down");
        assert_eq!(o, "rpmsg dump: link down; type `rptun start down`\n");
        let (_, o) = run(&mut sh, "help");
        assert!(o.contains("rpmsg dump <cpu>"), "{o}");
        assert_eq!(run(&mut sh, "exit").0, Flow::Exit);
    }
}
