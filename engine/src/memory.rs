//! Memory hints to the kernel. Transparent huge pages for the large arrays that are read at random:
//! the graph build's codes,
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
        let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
        let end = (ptr as usize + bytes) / HUGE_PAGE * HUGE_PAGE;
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

/// The size of a transparent huge page on x86-64 and most aarch64 kernels.
pub const HUGE_PAGE: usize = 2 << 20;

/// A zeroed array that starts on a 2 MiB boundary, its pages advised as huge pages before any is
/// touched: unlike [`huge_zeroed`], whose allocation starts just past a page boundary and so leaves
/// the first and last 2 MiB to small pages, every byte of it can sit on a huge page (a 2 MiB visited
/// table would otherwise get none). It costs up to 2 MiB more address space, not memory: the slack
/// before the start is never touched.
pub struct HugeArray<T> {
    buf: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Zero + Copy> HugeArray<T> {
    pub fn zeroed(len: usize) -> Self {
        let size = std::mem::size_of::<T>().max(1);
        let slack = if len == 0 {
            0
        } else {
            HUGE_PAGE.div_ceil(size)
        };
        let buf = T::zeroed_vec(len + slack);
        let addr = buf.as_ptr() as usize;
        // Elements up to the first 2 MiB boundary (allocations are aligned to `T`, so the distance
        // is a whole number of elements).
        let start = (addr.next_multiple_of(HUGE_PAGE) - addr) / size;
        let start = if start + len <= buf.len() { start } else { 0 };
        advise_huge_pages(buf.as_ptr() as *const u8, buf.len() * size);
        HugeArray { buf, start, len }
    }
}

impl<T: Zero + Copy> Default for HugeArray<T> {
    fn default() -> Self {
        Self::zeroed(0)
    }
}

impl<T> std::ops::Deref for HugeArray<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl<T> std::ops::DerefMut for HugeArray<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// Whether the kernel can back memory advised with `MADV_HUGEPAGE` by huge pages: transparent huge
/// pages are not switched off (`never`). Where that cannot be read (not Linux), no.
pub fn huge_pages_available() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| !s.contains("[never]"))
}

/// Memory this process can take now: Linux's `MemAvailable`, or less where the process's control
/// group (and every group above it: a SLURM job's limit sits on the job's group, its steps below it)
/// has a memory limit closer to its use (`memory.max - memory.current` in cgroup v2,
/// `memory.limit_in_bytes - memory.usage_in_bytes` in v1; use counts the group's page cache, so this
/// errs low). `MemAvailable` alone is the whole machine's: a job that trusted it could be killed at
/// its limit.
pub fn available_memory() -> Option<u64> {
    let machine = meminfo("MemAvailable:");
    let group = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| cgroup_headroom(&c, |p| std::fs::read_to_string(p).ok()));
    match (machine, group) {
        (Some(m), Some(g)) => Some(m.min(g)),
        (m, g) => m.or(g),
    }
}

/// The least `limit - use` over the process's memory control groups and their ancestors, given
/// `/proc/self/cgroup` and a reader of files; none where no group has a limit.
fn cgroup_headroom(proc_cgroup: &str, read: impl Fn(&str) -> Option<String>) -> Option<u64> {
    let number = |p: &str| read(p).and_then(|s| s.trim().parse::<u64>().ok());
    let mut least: Option<u64> = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (root, limit, usage) = if id == "0" && controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max", "memory.current")
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        } else {
            continue;
        };
        // The group and its ancestors, up to the root of the hierarchy this process sees.
        let mut at = path.trim_end_matches('/');
        loop {
            let dir = format!("{root}{at}");
            let (l, u) = (
                number(&format!("{dir}/{limit}")),
                number(&format!("{dir}/{usage}")),
            );
            // v1 writes "no limit" as a page-rounded i64::MAX, v2 as "max" (not a number).
            if let (Some(l), Some(u)) = (l, u) {
                if l < 1 << 60 {
                    let room = l.saturating_sub(u);
                    least = Some(least.map_or(room, |x| x.min(room)));
                }
            }
            match at.rfind('/') {
                Some(i) => at = &at[..i],
                None => break,
            }
        }
    }
    least
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

/// This machine's memory in bytes (Linux's `MemTotal`), where it can be read.
pub fn total_memory() -> Option<u64> {
    meminfo("MemTotal:")
}

/// A line of `/proc/meminfo`, in bytes.
fn meminfo(key: &str) -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = m.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Reads `file` (`len` bytes) into the page cache on a background thread, in large sequential
/// requests (`POSIX_FADV_WILLNEED`), so that a search's first random reads of a memory-mapped file
/// find their pages there instead of each waiting for the disk. Nothing waits for it; the searches
/// run meanwhile, and a page they need first is read when they touch it. A hint: errors are ignored,
/// and elsewhere than Linux nothing is done.
pub fn warm_page_cache(file: std::fs::File, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        const STEP: u64 = 32 << 20;
        let _ = std::thread::Builder::new()
            .name("page-cache-warm".into())
            .spawn(move || {
                let mut at = 0u64;
                while at < len {
                    let n = STEP.min(len - at);
                    // Safety: posix_fadvise only reads the open file's pages into the page cache.
                    let rc = unsafe {
                        libc::posix_fadvise(
                            file.as_raw_fd(),
                            at as libc::off_t,
                            n as libc::off_t,
                            libc::POSIX_FADV_WILLNEED,
                        )
                    };
                    if rc != 0 {
                        return;
                    }
                    at += n;
                }
            });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, len);
}

#[cfg(test)]
mod cgroup_tests {
    use super::cgroup_headroom;
    use std::collections::HashMap;

    fn files(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_tightest_limit_of_the_group_and_its_ancestors_counts() {
        // cgroup v2: a SLURM step under its job; the job's limit is the tight one.
        let v2 = files(&[
            ("/sys/fs/cgroup/job/step/memory.max", "max"),
            ("/sys/fs/cgroup/job/step/memory.current", "100"),
            ("/sys/fs/cgroup/job/memory.max", "8000"),
            ("/sys/fs/cgroup/job/memory.current", "3000"),
            ("/sys/fs/cgroup/memory.max", "max"),
            ("/sys/fs/cgroup/memory.current", "9999999"),
        ]);
        let read = |p: &str| v2.get(p).cloned();
        assert_eq!(cgroup_headroom("0::/job/step\n", read), Some(5000));
        // cgroup v1 (the memory controller among others on its line), unlimited: none.
        let v1 = files(&[
            (
                "/sys/fs/cgroup/memory/a/memory.limit_in_bytes",
                "9223372036854771712",
            ),
            (
                "/sys/fs/cgroup/memory/a/memory.usage_in_bytes",
                "6084030464",
            ),
        ]);
        let read = |p: &str| v1.get(p).cloned();
        assert_eq!(cgroup_headroom("5:cpu,memory:/a\n0::/\n", read), None);
        let v1 = files(&[
            ("/sys/fs/cgroup/memory/a/memory.limit_in_bytes", "4096"),
            ("/sys/fs/cgroup/memory/a/memory.usage_in_bytes", "5000"),
        ]);
        let read = |p: &str| v1.get(p).cloned();
        assert_eq!(cgroup_headroom("4:memory:/a\n", read), Some(0));
        // Nothing readable, or no memory group: none.
        assert_eq!(cgroup_headroom("0::/\n3:cpuset:/\n", |_| None), None);
        assert_eq!(cgroup_headroom("garbage", |_| None), None);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    /// How many of the file's pages are in the page cache (`mincore` on a map of it).
    fn resident_pages(f: &std::fs::File, len: usize) -> usize {
        // Safety: a read-only map of a file this test wrote and does not change.
        let map = unsafe { memmap2::Mmap::map(f) }.unwrap();
        let page = 4096;
        let mut v = vec![0u8; len.div_ceil(page)];
        // Safety: `v` holds one byte for each page of the mapped range.
        let rc = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, len, v.as_mut_ptr()) };
        assert_eq!(rc, 0);
        v.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    fn warming_reads_a_file_into_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data");
        let len = 8 << 20;
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(&vec![7u8; len]).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let f = std::fs::File::open(&p).unwrap();
        // Written back, the clean pages can be dropped from the cache; a file system that keeps them
        // (tmpfs) cannot show the warming, and the test has nothing to check there.
        // Safety: posix_fadvise only drops clean cached pages of the open file.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let pages = len / 4096;
        if resident_pages(&f, len) == pages {
            eprintln!("the page cache kept the file: nothing to observe here");
            return;
        }
        super::warm_page_cache(f.try_clone().unwrap(), len as u64);
        let start = std::time::Instant::now();
        while resident_pages(&f, len) < pages {
            assert!(
                start.elapsed().as_secs() < 30,
                "{} of {pages} pages read after 30 s",
                resident_pages(&f, len)
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Keeps freed memory in the process for the next allocation instead of handing it back to the
/// kernel: the encoder's forward allocates and frees activations of several MiB per layer, and with
/// glibc's defaults many of them come back as fresh pages, each zero-filled by the kernel on first
/// touch (page faults were a few per cent of an encoding run). Blocks up to 32 MiB (glibc's largest
/// setting) come from malloc's heap rather than an `mmap` each, and the heap's top is not trimmed
/// below 1 GiB of free memory.
/// Process-wide: the binaries call it at start-up. A hint; elsewhere than glibc it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // Safety: mallopt only changes malloc's thresholds; called before the threads that allocate start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
