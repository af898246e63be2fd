//! Atomic file output: write a hidden temporary file next to the target, sync it, and
//! rename it over the target, so a reader never sees a partial file.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{anyhow, bail, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn describe(e: &std::io::Error, dir: &Path) -> String {
    let d = dir.display();
    match e.kind() {
        ErrorKind::NotFound => format!("folder '{d}' does not exist"),
        ErrorKind::PermissionDenied => format!("folder '{d}' is not writable (permission denied)"),
        ErrorKind::ReadOnlyFilesystem => format!("folder '{d}' is on a read-only file system"),
        ErrorKind::NotADirectory => format!("'{d}' is not a folder"),
        ErrorKind::StorageFull => "no space left on device".to_string(),
        _ => e.to_string(),
    }
}

/// Writes `bytes` to `path` atomically.
///
/// The data goes to `.<name>.<pid>.<n>.tmp` in the target's folder, is flushed and
/// synced, then renamed over `path`. On any failure the temporary file is removed and
/// `path` is left untouched; the error names `path` and the reason.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let shown = path.display();
    let name = match path.file_name() {
        Some(n) => n.to_string_lossy().into_owned(),
        None => bail!("cannot write '{shown}': the path does not name a file"),
    };
    let dir: PathBuf = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if path.is_dir() {
        bail!("cannot write '{shown}': a folder with that name exists");
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));

    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| anyhow!("cannot write '{shown}': {}", describe(&e, &dir)))?;

    let result = (|| -> std::io::Result<()> {
        file.write_all(bytes)?;
        file.flush()?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        bail!("cannot write '{shown}': {}", describe(&e, &dir));
    }
    // Make the rename durable where the platform allows it (best effort).
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
