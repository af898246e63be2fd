//! Argument checks shared by every backend: an op validates its regions, weights and
//! shapes with these before touching memory (the CPU through raw pointers, the GPU
//! through a launch), so a bad call is an error and never an out-of-bounds access, and
//! both backends accept and refuse exactly the same calls.

use anyhow::{bail, ensure, Result};

use super::{Act, Backend, Cat, Conv2d, DdimStep, WeightKind};

/// A buffer whose length in floats bounds the regions cut from it.
pub trait Floats {
    fn floats(&self) -> usize;
}

/// What an uploaded weight was uploaded as.
pub trait WeightMeta {
    fn shape(&self) -> &[usize];
    fn kind(&self) -> WeightKind;
}

/// A vector weight (bias, norm scale / shift) of `len` elements.
pub fn check_vector<W: WeightMeta>(w: &W, len: usize, what: &str) -> Result<()> {
    ensure!(w.kind() == WeightKind::Vector, "{what}: expected a vector weight, got {:?}", w.kind());
    let n: usize = w.shape().iter().product();
    ensure!(n == len, "{what}: {n} elements, expected {len}");
    Ok(())
}

/// Both parts of a channel concat: valid regions of one spatial size whose batches
/// broadcast to `n_out`.
pub fn check_cat<B: Floats>(x: &Cat<'_, B>, n_out: usize, what: &str) -> Result<()> {
    let a = &x.a;
    check_input(a, a.c, a.h, a.w, n_out, what)?;
    if let Some(b) = &x.b {
        check_input(b, b.c, a.h, a.w, n_out, what)?;
    }
    Ok(())
}

/// The geometry of a validated convolution.
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    pub cout: usize,
    pub cin: usize,
    pub k: usize,
    /// Input size after the optional 2x up-sampling.
    pub hu: usize,
    pub wu: usize,
    pub ho: usize,
    pub wo: usize,
}

/// Everything `Backend::conv2d` requires of its arguments.
pub fn check_conv2d<B>(p: &Conv2d<'_, B>) -> Result<ConvShape>
where
    B: Backend + ?Sized,
    B::Buf: Floats,
    B::Weight: WeightMeta,
{
    let out = &p.out;
    check_region(out, "conv2d out")?;
    check_cat(&p.x, out.n, "conv2d x")?;
    let ws = p.w.shape();
    ensure!(p.w.kind() == WeightKind::Conv, "conv2d: weight uploaded as {:?}", p.w.kind());
    ensure!(ws.len() == 4 && ws[2] == ws[3], "conv2d: weight shape {ws:?} is not [cout, cin, k, k]");
    let (cout, cin, k) = (ws[0], ws[1], ws[2]);
    ensure!(p.k == k, "conv2d: k = {} but the weight is {ws:?}", p.k);
    ensure!(cin == p.x.channels(), "conv2d: weight expects {cin} input channels, got {}", p.x.channels());
    ensure!(out.c == cout, "conv2d: weight has {cout} output channels, out has {}", out.c);
    check_vector(p.bias, cout, "conv2d bias")?;
    ensure!(p.stride >= 1, "conv2d: stride 0");
    ensure!(p.pad.iter().all(|&v| v < 1 << 20), "conv2d: absurd padding {:?}", p.pad);
    let (h, w) = (p.x.a.h, p.x.a.w);
    ensure!(h < 1 << 20 && w < 1 << 20, "conv2d: absurd input size {h}x{w}");
    let up = p.upsample as usize;
    let (hu, wu) = (h << up, w << up);
    let [pt, pl, pb, pr] = p.pad;
    ensure!(
        hu + pt + pb >= k && wu + pl + pr >= k,
        "conv2d: kernel {k} larger than the padded input {}x{}",
        hu + pt + pb,
        wu + pl + pr
    );
    let ho = (hu + pt + pb - k) / p.stride + 1;
    let wo = (wu + pl + pr - k) / p.stride + 1;
    ensure!((out.h, out.w) == (ho, wo), "conv2d: output is {}x{}, the conv gives {ho}x{wo}", out.h, out.w);
    if let Some(t) = &p.temb {
        check_input(t, cout, 1, 1, out.n, "conv2d temb")?;
    }
    if let Some(r) = &p.residual {
        check_input(r, cout, ho, wo, out.n, "conv2d residual")?;
    }
    check_disjoint(out, &[Some(&p.x.a), p.x.b.as_ref(), p.temb.as_ref(), p.residual.as_ref()], "conv2d")?;
    Ok(ConvShape { cout, cin, k, hu, wu, ho, wo })
}

/// Everything `Backend::group_norm` requires of its arguments.
pub fn check_group_norm<B: Floats, W: WeightMeta>(
    x: &Cat<'_, B>,
    gamma: &W,
    beta: &W,
    groups: usize,
    out: &Act<'_, B>,
) -> Result<()> {
    check_region(out, "group_norm out")?;
    check_cat(x, out.n, "group_norm x")?;
    let c = x.channels();
    ensure!(
        (out.c, out.h, out.w) == (c, x.a.h, x.a.w),
        "group_norm: out ({}, {}, {}) for input ({c}, {}, {})",
        out.c,
        out.h,
        out.w,
        x.a.h,
        x.a.w
    );
    ensure!(groups >= 1 && c.is_multiple_of(groups), "group_norm: {c} channels in {groups} groups");
    check_vector(gamma, c, "group_norm gamma")?;
    check_vector(beta, c, "group_norm beta")?;
    check_disjoint(out, &[Some(&x.a), x.b.as_ref()], "group_norm")
}

/// The FiLM input of `Backend::group_norm_film`: `(n or fewer, 2C, 1, 1)`.
pub fn check_film<B: Floats>(film: &Act<'_, B>, out: &Act<'_, B>) -> Result<()> {
    check_input(film, 2 * out.c, 1, 1, out.n, "group_norm film")?;
    check_disjoint(out, &[Some(film)], "group_norm")
}

/// Everything `Backend::resample` requires of its arguments.
pub fn check_resample<B: Floats>(x: &Act<'_, B>, up: bool, out: &Act<'_, B>) -> Result<()> {
    check_region(out, "resample out")?;
    let (h, w) = if up { (2 * x.h, 2 * x.w) } else { (x.h / 2, x.w / 2) };
    ensure!(
        (out.c, out.h, out.w) == (x.c, h, w),
        "resample ({}): out ({}, {}, {}) for input ({}, {}, {})",
        if up { "up" } else { "down" },
        out.c,
        out.h,
        out.w,
        x.c,
        x.h,
        x.w
    );
    check_input(x, x.c, x.h, x.w, out.n, "resample x")?;
    check_disjoint(out, &[Some(x)], "resample")
}

/// Everything `Backend::timestep_embedding` requires of its arguments.
pub fn check_timestep_embedding<B: Floats>(t: &[f32], out: &Act<'_, B>) -> Result<()> {
    check_region(out, "timestep_embedding out")?;
    ensure!(
        t.len() == out.n && out.h == 1 && out.w == 1,
        "timestep_embedding: {} timesteps for an output of shape ({}, {}, {}, {})",
        t.len(),
        out.n,
        out.c,
        out.h,
        out.w
    );
    Ok(())
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

/// Everything `Backend::hspace_mix` requires of its arguments.
pub fn check_hspace_mix<B: Floats>(
    h: &Act<'_, B>,
    hc: &Act<'_, B>,
    gamma: f32,
    mask: Option<&Act<'_, B>>,
    out: &Act<'_, B>,
) -> Result<()> {
    check_region(out, "hspace_mix out")?;
    check_input(h, out.c, out.h, out.w, out.n, "hspace_mix h")?;
    check_input(hc, out.c, out.h, out.w, out.n, "hspace_mix hc")?;
    if let Some(m) = mask {
        check_input(m, 1, out.h, out.w, out.n, "hspace_mix mask")?;
    }
    check_disjoint(out, &[Some(h), Some(hc), mask], "hspace_mix")?;
    ensure!(gamma.is_finite(), "hspace_mix: gamma {gamma}");
    Ok(())
}

/// Everything `Backend::ddim_step` requires of its arguments.
pub fn check_ddim_step<B: Floats>(p: &DdimStep<'_, B>) -> Result<()> {
    let out = &p.out;
    check_region(out, "ddim_step out")?;
    for (a, what) in [(&p.x, "ddim_step x"), (&p.eps_x0, "ddim_step eps_x0"), (&p.eps_dir, "ddim_step eps_dir")] {
        check_input(a, out.c, out.h, out.w, out.n, what)?;
    }
    check_disjoint(out, &[Some(&p.x), Some(&p.eps_x0), Some(&p.eps_dir)], "ddim_step")?;
    ensure!(p.a_i > 0.0 && p.a_i <= 1.0 && p.a_j > 0.0 && p.a_j <= 1.0, "ddim_step: alpha_bar ({}, {})", p.a_i, p.a_j);
    Ok(())
}

/// Everything `Backend::calibrate` requires of its arguments.
pub fn check_calibrate<B: Floats>(
    x: &Act<'_, B>,
    eps: &Act<'_, B>,
    eps_mod: &Act<'_, B>,
    a: f32,
    out: &Act<'_, B>,
) -> Result<()> {
    check_region(out, "calibrate out")?;
    for (t, what) in [(x, "calibrate x"), (eps, "calibrate eps"), (eps_mod, "calibrate eps_mod")] {
        check_input(t, out.c, out.h, out.w, out.n, what)?;
    }
    check_disjoint(out, &[Some(x), Some(eps), Some(eps_mod)], "calibrate")?;
    ensure!(a > 0.0 && a <= 1.0, "calibrate: alpha_bar {a}");
    Ok(())
}
