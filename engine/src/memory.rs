//! Transparent huge pages for the large arrays that are read at random: the graph build's codes,
//! link lists and visited tables. With 4 KiB pages, nearly every random access into a multi-GiB array
//! also misses the TLB and walks the page tables; 2 MiB pages cover 512 times as much per entry.
//!
//! Linux hands anonymous memory huge pages only where asked (`transparent_hugepage=madvise`, a
//! common default) and only for pages not yet touched, so the arrays are advised right after they
//! are allocated, before they are written. Elsewhere, or where the kernel declines, nothing changes
//! but speed.

/// Advises huge pages for the whole 2 MiB pages inside `bytes` bytes from `ptr`. A hint: errors are
/// ignored.
pub fn advise_huge_pages(ptr: *const u8, bytes: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + bytes) / HUGE * HUGE;
        if end > start {
            // Safety: madvise with MADV_HUGEPAGE only changes how the kernel backs these pages; the
            // range lies inside one live allocation of the caller.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, bytes);
}

/// A vector of `len` zeros whose untouched pages are advised as huge pages.
pub fn huge_zeroed<T: Zero>(len: usize) -> Vec<T> {
    let v = T::zeroed_vec(len);
    advise_huge_pages(
        v.as_ptr() as *const u8,
        v.capacity() * std::mem::size_of::<T>(),
    );
    v
}

/// An empty vector with room for `cap` elements, its pages advised as huge pages.
pub fn huge_with_capacity<T>(cap: usize) -> Vec<T> {
    let v = Vec::with_capacity(cap);
    advise_huge_pages(
        v.as_ptr() as *const u8,
        v.capacity() * std::mem::size_of::<T>(),
    );
    v
}

/// Element types whose all-zero vector is allocated zeroed (untouched pages cost no memory).
pub trait Zero: Sized {
    fn zeroed_vec(len: usize) -> Vec<Self>;
}

macro_rules! zero {
    ($($t:ty),*) => {$(
        impl Zero for $t {
            fn zeroed_vec(len: usize) -> Vec<Self> {
                vec![0 as $t; len]
            }
        }
    )*};
}
zero!(u8, u16, u32, u64);
