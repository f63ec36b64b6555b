//! Split virtqueue (placeholder until the queue branch lands).
#![forbid(unsafe_code)]
/// Maps descriptor addresses to region offsets.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Physical address of the window start.
    pub pa: u64,
    /// Region offset of the window start.
    pub offset: usize,
    /// Window length.
    pub len: usize,
}
/// Offsets of a ring's parts in a region.
#[derive(Debug, Clone, Copy)]
pub struct QueueLayout {
    /// Descriptor table.
    pub desc: usize,
    /// Avail ring.
    pub avail: usize,
    /// Used ring.
    pub used: usize,
    /// Entries.
    pub num: u16,
}
