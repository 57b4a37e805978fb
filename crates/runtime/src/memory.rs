//! Linear memories that commit and roll back: the memories of service instances.
//!
//! Each memory is a private (copy-on-write) mapping of a `memfd` holding its last
//! committed contents. The pages an invocation writes become private copies;
//! committing copies the private pages into the memfd, and rolling back drops them
//! so the memory reads the committed contents again. Both cost a page-table scan
//! plus work per private page, never a copy of the whole memory. After a commit up
//! to [`KEEP_PRIVATE_PAGES`] stay private (the next commit copies them again, which
//! is cheaper than faulting them back in: a service touching the same few pages on
//! every request pays no page faults); beyond that they are dropped, bounding both
//! the copying and the memory held twice.
//!
//! Page runs of a snapshot file map into a memory the same way, so a swapped-out
//! instance comes back without reading its memory up front: pages are read when the
//! guest first touches them. A committed page from such a run is remapped from the
//! memfd, since rolling back must return to it and not to the file.
//!
//! The page-table scan is the `PAGEMAP_SCAN` ioctl (Linux 6.7), with a fallback to
//! reading `/proc/self/pagemap` on older kernels: a written page is one that is no
//! longer the file's page.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

/// The host page size this module (and the snapshot format) work in.
pub(crate) const PAGE: usize = 4096;
/// How many committed pages may stay private copies (256 KiB).
const KEEP_PRIVATE_PAGES: usize = 64;

/// Creates the memories of service instances, and finds each again by its base
/// address once its instance exists.
#[derive(Default)]
pub(crate) struct CheckpointedMemories {
    created: Mutex<HashMap<usize, Weak<Region>>>,
}

impl CheckpointedMemories {
    /// The memory based at `base`, created while instantiating the caller's instance.
    pub(crate) fn claim(&self, base: *mut u8) -> Option<Arc<Region>> {
        self.created
            .lock()
            .unwrap()
            .remove(&(base as usize))?
            .upgrade()
    }
}

// SAFETY: every memory reserves `reserved + guard` bytes of address space up front,
// never moves, is zero-filled when created, and only ever makes the first
// `byte_size` bytes accessible; see `Region::new` and `Region::grow_to`.
unsafe impl MemoryCreator for CheckpointedMemories {
    fn new_memory(
        &self,
        _ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        reserved: Option<usize>,
        guard: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        let reserved = reserved.or(maximum).unwrap_or(4 << 30);
        let capacity = maximum.map_or(reserved, |maximum| maximum.min(reserved));
        let region = Region::new(minimum, capacity, reserved + guard)
            .map_err(|e| format!("cannot map a service memory: {e}"))?;
        let region = Arc::new(region);
        let mut created = self.created.lock().unwrap();
        created.retain(|_, region| region.strong_count() > 0);
        created.insert(region.base.as_ptr() as usize, Arc::downgrade(&region));
        Ok(Box::new(CheckpointedMemory(region)))
    }
}

struct CheckpointedMemory(Arc<Region>);

// SAFETY: as for `CheckpointedMemories`: the base never moves and growth stays
// within the reservation.
unsafe impl LinearMemory for CheckpointedMemory {
    fn byte_size(&self) -> usize {
        self.0.size()
    }

    fn byte_capacity(&self) -> usize {
        self.0.capacity
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        Ok(self.0.grow_to(new_size)?)
    }

    fn as_ptr(&self) -> *mut u8 {
        self.0.base.as_ptr()
    }
}

/// The address space of one memory: `mapped` bytes reserved at `base`, of which
/// the first `size` are accessible, backed by `committed`.
pub(crate) struct Region {
    base: NonNull<u8>,
    mapped: usize,
    capacity: usize,
    size: AtomicUsize,
    committed: File,
    /// One bit per page still mapped from a snapshot file rather than `committed`.
    from_file: Mutex<Vec<u64>>,
}

// SAFETY: `base` points to a mapping owned by the region for its whole life; the
// region only changes page mappings and protections, which the kernel serialises,
// and callers change contents only while no guest code runs on the memory.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    fn new(minimum: usize, capacity: usize, mapped: usize) -> io::Result<Region> {
        // SAFETY: sysconf has no preconditions.
        if unsafe { libc::sysconf(libc::_SC_PAGESIZE) } != PAGE as libc::c_long {
            return Err(io::Error::other("service memories need 4 KiB host pages"));
        }
        if minimum > capacity {
            return Err(io::Error::other(format!(
                "the memory needs {minimum} bytes but may have only {capacity}"
            )));
        }
        // SAFETY: the name is a NUL-terminated string; the flags are valid.
        let fd = unsafe { libc::memfd_create(c"nimbus-memory".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let committed = unsafe { File::from_raw_fd(fd) };
        committed.set_len(capacity as u64)?;
        // SAFETY: a fresh inaccessible reservation anywhere in the address space.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let region = Region {
            base: NonNull::new(base.cast()).expect("mmap never returns null on success"),
            mapped,
            capacity,
            size: AtomicUsize::new(0),
            committed,
            from_file: Mutex::default(),
        };
        region.map(0..capacity, libc::PROT_NONE, &region.committed, 0)?;
        region.grow_to(minimum)?;
        Ok(region)
    }

    /// How many bytes are accessible.
    pub(crate) fn size(&self) -> usize {
        self.size.load(Ordering::Acquire)
    }

    fn grow_to(&self, new_size: usize) -> io::Result<()> {
        let old_size = self.size();
        if new_size > self.capacity {
            return Err(io::Error::other("memory capacity exceeded"));
        }
        if new_size > old_size {
            // SAFETY: the range lies within the region's own mapping.
            let done = unsafe {
                libc::mprotect(
                    self.base.as_ptr().add(old_size).cast(),
                    new_size - old_size,
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            };
            if done != 0 {
                return Err(io::Error::last_os_error());
            }
            self.size.store(new_size, Ordering::Release);
        }
        Ok(())
    }

    /// Maps `range` of the memory from `file` at `offset`, copy-on-write.
    fn map(
        &self,
        range: Range<usize>,
        protection: i32,
        file: &File,
        offset: u64,
    ) -> io::Result<()> {
        assert!(range.end <= self.capacity && range.start.is_multiple_of(PAGE));
        // SAFETY: MAP_FIXED replaces pages of the region's own reservation only.
        let mapped = unsafe {
            libc::mmap(
                self.base.as_ptr().add(range.start).cast(),
                range.len(),
                protection,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Maps `pages` pages of `file` at `offset` into the memory from page
    /// `first_page` on, as their committed contents.
    pub(crate) fn map_file(
        &self,
        first_page: usize,
        pages: usize,
        file: &File,
        offset: u64,
    ) -> io::Result<()> {
        let range = first_page * PAGE..(first_page + pages) * PAGE;
        if range.end > self.size() {
            return Err(io::Error::other("pages beyond the end of the memory"));
        }
        self.map(range, libc::PROT_READ | libc::PROT_WRITE, file, offset)?;
        let mut from_file = self.from_file.lock().unwrap();
        let words = (first_page + pages).div_ceil(64);
        if from_file.len() < words {
            from_file.resize(words, 0);
        }
        for page in first_page..first_page + pages {
            from_file[page / 64] |= 1 << (page % 64);
        }
        Ok(())
    }

    /// The pages written since the last commit: a scan of the page tables, which
    /// copies nothing (see [`Written::bytes`] for what committing them will copy).
    pub(crate) fn written(&self) -> io::Result<Written> {
        let runs = written_runs(self.base.as_ptr() as usize, self.size())?;
        Ok(Written { runs })
    }

    /// Makes the memory's current contents the committed ones: copies the pages
    /// `written` found into the memfd. No guest code may run on the memory from the
    /// scan that found them until this returns. Works from any thread.
    pub(crate) fn commit(&self, written: Written) -> io::Result<()> {
        let runs = written.runs;
        for run in &runs {
            // SAFETY: the run lies within the accessible part of the memory (which
            // never shrinks) and no guest code runs while the memory is committed.
            let private =
                unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(run.start), run.len()) };
            self.committed.write_all_at(private, run.start as u64)?;
        }
        let private_pages = runs.iter().map(|run| run.len() / PAGE).sum::<usize>();
        let mut from_file = self.from_file.lock().unwrap();
        for run in runs {
            if clear_bits(&mut from_file, run.start / PAGE..run.end / PAGE) {
                let offset = run.start as u64;
                self.map(
                    run,
                    libc::PROT_READ | libc::PROT_WRITE,
                    &self.committed,
                    offset,
                )?;
            } else if private_pages > KEEP_PRIVATE_PAGES {
                self.drop_private(run)?;
            }
        }
        Ok(())
    }

    /// Brings back the committed contents, dropping every page written since.
    pub(crate) fn roll_back(&self) -> io::Result<()> {
        self.drop_private(0..self.size())
    }

    /// Drops the private copies of pages in `range`: they read their file again.
    fn drop_private(&self, range: Range<usize>) -> io::Result<()> {
        // SAFETY: the range lies within the accessible part of the region's mapping.
        let done = unsafe {
            libc::madvise(
                self.base.as_ptr().add(range.start).cast(),
                range.len(),
                libc::MADV_DONTNEED,
            )
        };
        if done != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The pages of a memory written since its last commit, as byte ranges.
pub(crate) struct Written {
    runs: Vec<Range<usize>>,
}

impl Written {
    /// How many bytes committing them copies.
    pub(crate) fn bytes(&self) -> usize {
        self.runs.iter().map(Range::len).sum()
    }
}

/// Clears the bits of `pages`, saying whether any was set.
fn clear_bits(bits: &mut [u64], pages: Range<usize>) -> bool {
    let mut any = false;
    for page in pages {
        if let Some(word) = bits.get_mut(page / 64) {
            any |= *word & (1 << (page % 64)) != 0;
            *word &= !(1 << (page % 64));
        }
    }
    any
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the region owns the whole mapping, and wasmtime has dropped the
        // memory (the last `Arc`) so nothing refers into it any more.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.mapped) };
    }
}

/// The byte ranges of `[base, base + len)`, relative to `base`, whose pages were
/// written since they were last mapped from their file.
fn written_runs(base: usize, len: usize) -> io::Result<Vec<Range<usize>>> {
    static NO_SCAN_IOCTL: AtomicBool = AtomicBool::new(false);
    let pagemap = pagemap()?;
    if !NO_SCAN_IOCTL.load(Ordering::Relaxed) {
        match scan(pagemap, base, len) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {
                NO_SCAN_IOCTL.store(true, Ordering::Relaxed);
            }
            scanned => return scanned,
        }
    }
    read_pagemap(pagemap, base, len)
}

fn pagemap() -> io::Result<&'static File> {
    static PAGEMAP: OnceLock<Result<File, String>> = OnceLock::new();
    PAGEMAP
        .get_or_init(|| File::open("/proc/self/pagemap").map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| io::Error::other(format!("/proc/self/pagemap: {e}")))
}

// The PAGEMAP_SCAN interface, from <linux/fs.h>.
#[repr(C)]
struct ScanArgs {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;
/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = (3 << 30)
    | ((size_of::<ScanArgs>() as libc::c_ulong) << 16)
    | ((b'f' as libc::c_ulong) << 8)
    | 16;

fn scan(pagemap: &File, base: usize, len: usize) -> io::Result<Vec<Range<usize>>> {
    let mut found = Vec::new();
    let mut regions = [PageRegion::default(); 64];
    let end = (base + len) as u64;
    let mut start = base as u64;
    while start < end {
        // Pages that are present or swapped, and neither the file's nor the zero page.
        let mut args = ScanArgs {
            size: size_of::<ScanArgs>() as u64,
            flags: 0,
            start,
            end,
            walk_end: 0,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            max_pages: 0,
            category_inverted: PAGE_IS_FILE | PAGE_IS_PFNZERO,
            category_mask: PAGE_IS_FILE | PAGE_IS_PFNZERO,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        };
        // SAFETY: `args` and the `regions` it points to outlive the call, and
        // `vec_len` is the length of `regions`.
        let filled = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut args) };
        if filled < 0 {
            return Err(io::Error::last_os_error());
        }
        for region in &regions[..filled as usize] {
            push_run(
                &mut found,
                region.start as usize - base..region.end as usize - base,
            );
        }
        start = args.walk_end;
    }
    Ok(found)
}

fn read_pagemap(pagemap: &File, base: usize, len: usize) -> io::Result<Vec<Range<usize>>> {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    const FILE_OR_SHARED: u64 = 1 << 61;
    let mut entries = vec![0u8; len / PAGE * 8];
    pagemap.read_exact_at(&mut entries, (base / PAGE * 8) as u64)?;
    let mut found = Vec::new();
    for (page, entry) in entries.chunks_exact(8).enumerate() {
        let entry = u64::from_ne_bytes(entry.try_into().expect("8 bytes"));
        if entry & (PRESENT | SWAPPED) != 0 && entry & FILE_OR_SHARED == 0 {
            push_run(&mut found, page * PAGE..(page + 1) * PAGE);
        }
    }
    Ok(found)
}

fn push_run(runs: &mut Vec<Range<usize>>, run: Range<usize>) {
    match runs.last_mut() {
        Some(last) if last.end == run.start => last.end = run.end,
        _ => runs.push(run),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(pages: usize) -> Region {
        Region::new(pages * PAGE, 128 * PAGE, 256 * PAGE).unwrap()
    }

    fn commit(region: &Region) {
        region.commit(region.written().unwrap()).unwrap();
    }

    #[allow(clippy::mut_from_ref)] // each test is its memory's only user
    fn bytes(region: &Region) -> &mut [u8] {
        // SAFETY: the test is the memory's only user.
        unsafe { std::slice::from_raw_parts_mut(region.base.as_ptr(), region.size()) }
    }

    #[test]
    fn a_new_memory_is_zeroed_and_nothing_is_written() {
        let region = region(4);
        assert!(bytes(&region).iter().all(|b| *b == 0));
        assert_eq!(
            written_runs(region.base.as_ptr() as usize, region.size()).unwrap(),
            []
        );
    }

    #[test]
    fn written_pages_are_found_by_both_scans() {
        let region = region(8);
        let memory = bytes(&region);
        let _ = memory[PAGE * 7]; // read only: still the file's page
        memory[PAGE + 5] = 1;
        memory[PAGE * 2] = 2;
        memory[PAGE * 5 + 9] = 3;
        let base = region.base.as_ptr() as usize;
        let expected = [PAGE..3 * PAGE, 5 * PAGE..6 * PAGE];
        assert_eq!(
            scan(pagemap().unwrap(), base, region.size()).unwrap(),
            expected
        );
        assert_eq!(
            read_pagemap(pagemap().unwrap(), base, region.size()).unwrap(),
            expected
        );
        assert_eq!(region.written().unwrap().bytes(), 3 * PAGE);
    }

    #[test]
    fn roll_back_returns_to_the_last_commit() {
        let region = region(4);
        let memory = bytes(&region);
        memory[10] = 1;
        memory[PAGE * 3] = 7;
        commit(&region);
        memory[10] = 2;
        memory[PAGE * 2] = 9;
        region.roll_back().unwrap();
        assert_eq!((memory[10], memory[PAGE * 2], memory[PAGE * 3]), (1, 0, 7));
        // Pages kept private by a commit are committed again by the next one.
        memory[PAGE * 3] = 8;
        commit(&region);
        region.roll_back().unwrap();
        assert_eq!((memory[10], memory[PAGE * 3]), (1, 8));
    }

    #[test]
    fn a_large_commit_drops_its_private_copies() {
        let region = region(KEEP_PRIVATE_PAGES + 2);
        let memory = bytes(&region);
        let base = region.base.as_ptr() as usize;
        memory.iter_mut().step_by(PAGE).for_each(|b| *b = 3);
        commit(&region);
        assert_eq!(written_runs(base, region.size()).unwrap(), []);
        assert!(memory.iter().step_by(PAGE).all(|b| *b == 3));
        memory[0] = 4;
        commit(&region);
        let runs = written_runs(base, region.size()).unwrap();
        assert_eq!((runs.len(), &runs[0]), (1, &(0..PAGE)));
    }

    #[test]
    fn growth_is_zeroed_and_bounded_by_the_capacity() {
        let region = region(1);
        region.grow_to(3 * PAGE).unwrap();
        assert!(bytes(&region).iter().all(|b| *b == 0));
        bytes(&region)[3 * PAGE - 1] = 1;
        assert!(region.grow_to(129 * PAGE).is_err());
        assert_eq!(region.size(), 3 * PAGE);
    }

    #[test]
    fn file_pages_map_in_as_committed_contents() {
        let region = region(4);
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(&[5u8; 2 * PAGE], 0).unwrap();
        region.map_file(1, 2, &file, 0).unwrap();
        let memory = bytes(&region);
        assert_eq!(
            (
                memory[0],
                memory[PAGE],
                memory[3 * PAGE - 1],
                memory[3 * PAGE]
            ),
            (0, 5, 5, 0)
        );
        memory[PAGE] = 6;
        region.roll_back().unwrap();
        assert_eq!(memory[PAGE], 5);
        memory[PAGE] = 6;
        commit(&region);
        region.roll_back().unwrap();
        assert_eq!(memory[PAGE], 6);
        assert!(region.map_file(3, 2, &file, 0).is_err());
    }
}
