//! The `rptun` command.
fn main() {}
