//! The `rptun` command.
mod shell;

fn main() {}
