//! Replacing a file so that a crash at any point leaves the old or the new
//! contents, never a mix: write a temporary file beside it, flush it to disk,
//! rename it over the target, flush the directory.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// Makes temporary names unique between threads of one process; the process id
/// separates processes.
static SERIAL: AtomicU64 = AtomicU64::new(0);

/// Writes `path` through `write`, atomically as the module explains. On failure
/// the temporary file is removed and `path` is left as it was.
pub(crate) fn replace(path: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> Result<()> {
    let io_error = |source: io::Error| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = path.file_name().ok_or_else(|| {
        io_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path must end in a file name",
        ))
    })?;
    // The rename is only atomic within one file system, so the temporary file
    // lives in the target's own directory.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let temp = dir.join(format!(
        ".{}.{}-{}.tmp",
        name.to_string_lossy(),
        process_id(),
        SERIAL.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        write(&mut file)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        // Best effort: a leftover temporary file is harmless, the target is intact.
        let _ = std::fs::remove_file(&temp);
        return Err(io_error(io::Error::new(
            e.kind(),
            format!(
                "writing the temporary file {} failed, {} was left as it was: {e}",
                temp.display(),
                path.display()
            ),
        )));
    }
    if let Err(e) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(io_error(e));
    }
    sync_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// This process's id; in a browser (no processes, and `std::process::id` panics
/// there) 0: the file operations that follow fail with an error instead.
fn process_id() -> u32 {
    #[cfg(target_arch = "wasm32")]
    return 0;
    #[cfg(not(target_arch = "wasm32"))]
    std::process::id()
}

/// Flushes the directory entry of the rename to disk.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `File::open` cannot open a directory on other platforms, so the rename is not
/// flushed separately there (the file's own contents are).
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}
