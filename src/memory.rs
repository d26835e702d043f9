//! Handing freed heap memory back to the system after large, short-lived
//! allocations (loading a policy file with many rules).

/// Return free heap pages to the system. glibc keeps freed memory mapped;
/// after a policy load that is hundreds of megabytes of parser garbage.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has
    // no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return memory by themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}
