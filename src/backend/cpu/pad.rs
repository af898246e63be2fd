//! The zero-padded, optionally 2x up-sampled copy of an input plane that both
//! convolutions (`conv.rs`, `winograd.rs`) read, so that their packing never tests bounds.

/// Writes the zero-padded, optionally 2x nearest up-sampled, `src` plane (width `w`)
/// into `dst` (`wp` floats per row).
pub fn pad_plane(src: &[f32], w: usize, up: usize, pad: [usize; 4], wp: usize, dst: &mut [f32]) {
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
