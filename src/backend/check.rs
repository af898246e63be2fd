//! Region checks shared by every backend: an op validates its `Act` regions with these
//! before touching memory (the CPU through raw pointers, the GPU through a launch), so a
//! bad call is an error and never an out-of-bounds access.

use anyhow::{bail, ensure, Result};

use super::Act;

/// A buffer whose length in floats bounds the regions cut from it.
pub trait Floats {
    fn floats(&self) -> usize;
}

/// `a` lies inside its buffer (with overflow-checked sizes).
pub fn check_region<B: Floats>(a: &Act<'_, B>, what: &str) -> Result<()> {
    let len = a.n.checked_mul(a.c).and_then(|v| v.checked_mul(a.h)).and_then(|v| v.checked_mul(a.w));
    match len.and_then(|l| a.off.checked_add(l)) {
        Some(end) if end <= a.buf.floats() => Ok(()),
        _ => bail!(
            "{what}: region off {} shape ({}, {}, {}, {}) exceeds its buffer of {} floats",
            a.off,
            a.n,
            a.c,
            a.h,
            a.w,
            a.buf.floats()
        ),
    }
}

/// `inp` is a valid region of per-sample shape `(c, h, w)` whose batch broadcasts to
/// `n_out` (equal, or smaller and non-zero: output sample `b` reads `b % n`).
pub fn check_input<B: Floats>(inp: &Act<'_, B>, c: usize, h: usize, w: usize, n_out: usize, what: &str) -> Result<()> {
    check_region(inp, what)?;
    ensure!(
        (inp.c, inp.h, inp.w) == (c, h, w),
        "{what}: per-sample shape ({}, {}, {}) != expected ({c}, {h}, {w})",
        inp.c,
        inp.h,
        inp.w
    );
    ensure!(inp.n == n_out || (inp.n >= 1 && inp.n < n_out), "{what}: batch {} does not broadcast to {n_out}", inp.n);
    Ok(())
}

/// The output region overlaps no input region of the same buffer.
pub fn check_disjoint<B>(out: &Act<'_, B>, inputs: &[Option<&Act<'_, B>>], what: &str) -> Result<()> {
    for inp in inputs.iter().flatten() {
        if std::ptr::eq(out.buf, inp.buf) && !out.is_empty() && !inp.is_empty() {
            ensure!(
                out.off + out.len() <= inp.off || inp.off + inp.len() <= out.off,
                "{what}: output [{}, {}) overlaps an input [{}, {})",
                out.off,
                out.off + out.len(),
                inp.off,
                inp.off + inp.len()
            );
        }
    }
    Ok(())
}
