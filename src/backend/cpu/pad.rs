//! The zero-padded, optionally 2x up-sampled copies of a sample's input planes that
//! both convolutions (`conv.rs`, `winograd.rs`) read, so that their packing never tests
//! bounds.

use super::threads::{par_for, workers_for, SyncPtr};
use super::{sample_ptr, CpuBackend, CpuBuf};
use crate::backend::Cat;

/// How a sample's planes are laid out for a convolution: padding `[top, left, bottom,
/// right]` of the (up-sampled) input and the padded plane's `hp x wp`.
#[derive(Clone, Copy)]
pub struct Padding {
    pub up: bool,
    pub pad: [usize; 4],
    pub hp: usize,
    pub wp: usize,
}

/// One pointer per input channel of sample `b` of `x` (the concat: `x.a`'s channels, then
/// `x.b`'s): to the plane itself when `padding` is `None` (rows `w` long), else to its
/// padded copy in `scratch` (`hp * wp` floats per channel, rows `wp` long), written here
/// by up to `be.threads` workers.
///
/// # Safety
/// `x` validated for sample `b`; `scratch` holds `cin * hp * wp` floats when padding, and
/// nothing else reads or writes it meanwhile.
pub unsafe fn sample_planes(
    be: &CpuBackend,
    x: &Cat<'_, CpuBuf>,
    b: usize,
    padding: Option<Padding>,
    scratch: &mut [f32],
) -> Vec<SyncPtr> {
    let (h, w, ca) = (x.a.h, x.a.w, x.a.c);
    let cin = ca + x.b.as_ref().map_or(0, |xb| xb.c);
    let a_ptr = SyncPtr(sample_ptr(&x.a, b) as *mut f32);
    let b_ptr = x.b.as_ref().map(|xb| SyncPtr(sample_ptr(xb, b) as *mut f32));
    // Input channel `ci` of the concat.
    let plane = |ci: usize| -> *const f32 {
        match b_ptr {
            Some(bp) if ci >= ca => bp.get().add((ci - ca) * h * w),
            _ => a_ptr.get().add(ci * h * w),
        }
    };
    let Some(Padding { up, pad, hp, wp }) = padding else {
        return (0..cin).map(|ci| SyncPtr(plane(ci) as *mut f32)).collect();
    };
    let dst = SyncPtr(scratch.as_mut_ptr());
    // Memory-bound: a second worker pays off only for large planes.
    par_for(workers_for(be.threads, 4 * cin * hp * wp), cin, |ci| {
        // SAFETY: a validated input plane of h * w floats; each channel writes its own
        // plane of `scratch`.
        let (sp, d) = unsafe {
            (
                std::slice::from_raw_parts(plane(ci), h * w),
                std::slice::from_raw_parts_mut(dst.get().add(ci * hp * wp), hp * wp),
            )
        };
        pad_plane(sp, w, up as usize, pad, wp, d);
    });
    (0..cin).map(|ci| SyncPtr(dst.get().add(ci * hp * wp))).collect()
}

/// Writes the zero-padded, optionally 2x nearest up-sampled, `src` plane (width `w`)
/// into `dst` (`wp` floats per row).
fn pad_plane(src: &[f32], w: usize, up: usize, pad: [usize; 4], wp: usize, dst: &mut [f32]) {
    let [pt, pl, _, _] = pad;
    let hu = (src.len() / w.max(1)) << up;
    for (yy, row) in dst.chunks_exact_mut(wp).enumerate() {
        if yy < pt || yy >= pt + hu {
            row.fill(0.0);
            continue;
        }
        let s = &src[((yy - pt) >> up) * w..][..w];
        let (left, rest) = row.split_at_mut(pl);
        left.fill(0.0);
        let (mid, right) = rest.split_at_mut(w << up);
        right.fill(0.0);
        if up == 0 {
            mid.copy_from_slice(s);
        } else {
            for (pair, &v) in mid.chunks_exact_mut(2).zip(s) {
                pair[0] = v;
                pair[1] = v;
            }
        }
    }
}
