//! The `rptun` command.
#[allow(dead_code)] // wired into `rptun sim` as it lands
mod shell;

fn main() {}
