//! The spool's file I/O seam: every operation the worker does on a segment
//! file (create, write, fsync, truncate, remove) goes through [`FileOps`].
//!
//! The service uses [`OsFiles`] (the operating system, nothing more). Tests
//! put a wrapper in between that fails chosen calls (a write with `ENOSPC`,
//! an fsync with `EIO`), so the spool's error paths run without a full disk.
//!
//! Must never: add policy (retries, fallbacks) or state besides a test's
//! fault switches; the spool decides what a failure means.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::Path;

/// The file operations the spool's worker does on segments.
pub trait FileOps: Send + Sync + std::fmt::Debug + 'static {
    /// Creates a new file for appending; fails if it exists.
    fn create_new(&self, path: &Path) -> io::Result<File>;
    /// Writes all of `bytes` at the end of `file`.
    fn write_all(&self, file: &mut File, bytes: &[u8]) -> io::Result<()>;
    /// Makes what was written durable (fdatasync).
    fn sync_data(&self, file: &File) -> io::Result<()>;
    /// Cuts `file` back to `len` bytes (undoing a partial write).
    fn set_len(&self, file: &File, len: u64) -> io::Result<()>;
    /// Deletes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
}

/// The operating system's file operations.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFiles;

impl FileOps for OsFiles {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().create_new(true).append(true).open(path)
    }

    fn write_all(&self, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        file.write_all(bytes)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        file.set_len(len)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
}
