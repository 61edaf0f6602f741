//! What the caller sees of a long command.

/// Progress of a build, merge or graph build, as the binary shows it (bars, log lines).
pub trait Progress: Sync {
    /// A new stage (`reading`, `encoding`, `graph`), with its total when known.
    fn stage(&self, name: &str, total: Option<u64>);
    /// The current stage's position.
    fn set(&self, pos: u64);
    fn finish_stage(&self);
    fn message(&self, msg: &str);
}

/// A progress sink that prints nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn stage(&self, _: &str, _: Option<u64>) {}
    fn set(&self, _: u64) {}
    fn finish_stage(&self) {}
    fn message(&self, _: &str) {}
}
