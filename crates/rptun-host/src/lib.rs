//! Host (std) platforms for rptun.
