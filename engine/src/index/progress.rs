//! What the caller sees of a long command.

/// Progress of a build, merge or graph build, as the binary shows it (bars, log lines).
pub trait Progress: Sync {
    /// A new stage (`reading`, `encoding`, `graph`), with its total when known.
    fn stage(&self, name: &str, total: Option<u64>);
    /// The current stage's position.
    fn set(&self, pos: u64);
    fn finish_stage(&self);
    fn message(&self, msg: &str);
    /// Whether the caller has asked the command to stop (a front end's Ctrl-C: the Python package's
    /// KeyboardInterrupt). A build asks after each chunk of vectors is appended and recorded, and
    /// before its graph, and then stops with `Error::Cancelled`, leaving its progress record as a
    /// stopped process would: the same command run again resumes from there.
    fn cancelled(&self) -> bool {
        false
    }
}

/// A progress sink that prints nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn stage(&self, _: &str, _: Option<u64>) {}
    fn set(&self, _: u64) {}
    fn finish_stage(&self) {}
    fn message(&self, _: &str) {}
}
