//! Giving memory back to the system after a burst.
//!
//! glibc's malloc raises its mmap threshold each time a large block that it
//! mmapped is freed (up to 32 MiB), so after one burst of large request
//! buffers the next ones come from the heap arenas, and freed arena memory
//! is rarely returned: a webhook that held 60 MiB of bodies for a second
//! kept 60 MiB resident afterwards. A fixed threshold keeps every block of
//! 128 KiB and more (request bodies, decoded reviews, gRPC messages) in its
//! own mapping, unmapped when freed.
//! <https://man7.org/linux/man-pages/man3/mallopt.3.html> (M_MMAP_THRESHOLD:
//! setting it disables the dynamic adjustment).

/// How often the servers hand freed heap memory back ([`trim_every`]).
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Blocks this large and larger get their own mapping.
pub const MMAP_THRESHOLD: usize = 128 * 1024;

/// Call once, first thing in `main`. A no-op where the C library is not
/// glibc.
pub fn return_large_blocks_when_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters, under malloc's own
    // lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        // Free heap top beyond this is returned at once (the default
        // threshold follows the mmap one when it moves; fixed here too).
        libc::mallopt(libc::M_TRIM_THRESHOLD, (2 * MMAP_THRESHOLD) as libc::c_int);
    }
}

/// Hands freed heap memory back to the system every `every`, for the
/// process's life. The trim threshold only returns the top of the main
/// heap; after a burst of many connections the free memory sits in the
/// middle of the heap and in the worker threads' arenas, which only
/// `malloc_trim` releases (it walks every arena, a few microseconds when
/// little is free). <https://man7.org/linux/man-pages/man3/malloc_trim.3.html>
pub async fn trim_every(every: std::time::Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim takes malloc's own locks; it frees nothing
        // still in use.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
