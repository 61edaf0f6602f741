//! How the kernels share out their work: whether an operation may split across the rayon pool
//! ([`may_split`], [`with_splitting`]), the size below which a pass stays on the calling thread, and
//! the raw pointers that parallel tasks writing disjoint regions share. The leaves of the kernels:
//! nothing here calls another kernel.

thread_local! {
    /// Whether the operations run by this thread may split their work across the pool, when set
    /// (see [`with_splitting`]); unset, they split unless the thread is a pool worker.
    static SPLIT: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether an operation may split its work across the rayon pool: as [`with_splitting`] set it, and
/// otherwise only from outside the pool (a worker is taken to be encoding one of many batches, whose
/// operations do better on one thread each than split again).
pub fn may_split() -> bool {
    SPLIT
        .get()
        .unwrap_or_else(|| rayon::current_thread_index().is_none())
}

/// Runs `f` with the operations it runs on this thread splitting across the pool (`split`) or not.
pub fn with_splitting<R>(split: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SPLIT.set(self.0);
        }
    }
    let _restore = Restore(SPLIT.replace(Some(split)));
    f()
}

/// A raw pointer that parallel tasks may share: each task writes a disjoint region (also used by
/// the int8 products).
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub(crate) *mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer, through a method: a closure that calls it captures the whole (Sync) wrapper, not
    /// the raw pointer field, which is neither Send nor Sync.
    pub(crate) fn ptr(&self) -> *mut f32 {
        self.0
    }
}

/// [`SharedMut`]'s read-only twin (the int8 residual), for the same reason.
#[derive(Clone, Copy)]
pub(crate) struct SharedConst(pub(crate) *const f32);
unsafe impl Send for SharedConst {}
unsafe impl Sync for SharedConst {}

impl SharedConst {
    pub(crate) fn ptr(&self) -> *const f32 {
        self.0
    }
}

/// Up to this many output values, a projection's elementwise passes run on the calling thread.
pub(crate) const SERIAL_ELEMENTS: usize = 1 << 15;
