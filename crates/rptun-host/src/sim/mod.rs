//! The two-process simulator: NuttX's `sim:rpserver` / `sim:rpproxy`
//! shared-memory contract (DESIGN.md §7).

pub mod boot;
pub mod layout;
pub mod table;
