//! Minimal fork-join over work items with scoped threads (no rayon). Small jobs run
//! inline: spawning costs tens of microseconds, more than a tiny op takes.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `f(i)` for every `i in 0..items` on up to `threads` workers (the caller is one
/// of them). Items are handed out dynamically so uneven items still balance.
pub fn par_for<F: Fn(usize) + Sync>(threads: usize, items: usize, f: F) {
    let workers = threads.min(items);
    if workers <= 1 {
        (0..items).for_each(f);
        return;
    }
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= items {
            break;
        }
        f(i);
    };
    std::thread::scope(|s| {
        for _ in 1..workers {
            s.spawn(work);
        }
        work();
    });
}

/// Worker count for a job of `flops` floating-point operations: one thread below the
/// point where a spawn would cost more than it saves.
pub fn workers_for(threads: usize, flops: usize) -> usize {
    const MIN_PER_THREAD: usize = 8_000_000;
    threads.min(flops / MIN_PER_THREAD).max(1)
}

/// How a product's rows are split between work items when its `col_blocks` column
/// blocks are too few to keep `workers` busy (deep, small layers): `(panels per item,
/// row items)` over `panels` row panels.
pub fn row_split(workers: usize, col_blocks: usize, panels: usize) -> (usize, usize) {
    let mut mb = 1;
    if workers > 1 && col_blocks < 2 * workers {
        mb = (2 * workers).div_ceil(col_blocks).min(panels);
    }
    let per_mb = panels.div_ceil(mb);
    (per_mb, panels.div_ceil(per_mb))
}

/// A raw pointer that worker closures may share; each worker writes a disjoint part.
pub struct SyncPtr<T = f32>(pub *mut T);
// SAFETY: used only to hand disjoint output regions (or read-only inputs) to workers.
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}
impl<T> Clone for SyncPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    /// Going through a method makes closures capture the wrapper, not the raw field.
    pub fn get(self) -> *mut T {
        self.0
    }
}

/// Scratch vectors reused across ops (packing buffers, score tiles), so that an op
/// allocates only until the pool has warmed up.
#[derive(Default)]
pub struct Pool {
    bufs: std::sync::Mutex<Vec<Vec<f32>>>,
}

impl Pool {
    /// A scratch vector of at least `len` floats (contents unspecified).
    pub fn take(&self, len: usize) -> Scratch<'_> {
        let mut buf = {
            let mut bufs = self.bufs.lock().unwrap_or_else(|e| e.into_inner());
            // Best fit: the smallest buffer that is large enough, else the largest one
            // (grown below), so big scratch stays reserved for big requests.
            let fits = (0..bufs.len()).filter(|&i| bufs[i].len() >= len).min_by_key(|&i| bufs[i].len());
            let pick = fits.or_else(|| (0..bufs.len()).max_by_key(|&i| bufs[i].len()));
            pick.map(|i| bufs.swap_remove(i)).unwrap_or_default()
        };
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        // The unit tests hand out longer buffers full of NaN, so that code relying on a
        // scratch's length or contents fails there.
        #[cfg(test)]
        {
            buf.resize(buf.len().max(len + len / 4 + 33), 0.0);
            buf.fill(f32::NAN);
        }
        Scratch { pool: self, buf }
    }
}

/// A vector borrowed from a [`Pool`], returned to it on drop.
pub struct Scratch<'a> {
    pool: &'a Pool,
    buf: Vec<f32>,
}

impl std::ops::Deref for Scratch<'_> {
    type Target = Vec<f32>;
    fn deref(&self) -> &Vec<f32> {
        &self.buf
    }
}
impl std::ops::DerefMut for Scratch<'_> {
    fn deref_mut(&mut self) -> &mut Vec<f32> {
        &mut self.buf
    }
}
impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        let mut bufs = self.pool.bufs.lock().unwrap_or_else(|e| e.into_inner());
        if bufs.len() < 32 {
            bufs.push(std::mem::take(&mut self.buf));
        }
    }
}
