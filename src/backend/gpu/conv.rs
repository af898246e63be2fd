//! Convolution launcher (kernels/conv.cu): one implicit-GEMM launch per conv with
//! M = cout, N = n*ho*wo output pixels, K = cin*k*k. The im2col operand is gathered
//! by the kernel from the (concatenated, broadcast, up-sampled, zero-padded) input;
//! bias, temb and residual are added in its epilogue.
//!
//! Launch contract (`DS_CONV_*` of kernels/params.h): block (DS_CONV_THREADS, 1, 1),
//! grid (ceil(N / DS_CONV_BN), ceil(cout / BM), 1), no dynamic shared memory; BM =
//! DS_CONV_BM for `conv2d_f32` (SIMT) and DS_CONV_BM_MMA for `conv2d_f16` / `conv2d_bf16`
//! (tensor cores).

use anyhow::{ensure, Result};

use super::device::Device;
use super::params::launch::{DS_CONV_BM, DS_CONV_BM_MMA, DS_CONV_BN, DS_CONV_THREADS};
use super::params::ConvParams;
use super::{int, GpuBackend};
use crate::backend::check::{check_conv2d, ConvShape};
use crate::backend::Conv2d;
use crate::dtype::Precision;

/// Output channels per block: the SIMT tile (f32) or the tensor-core tile (f16 / bf16).
fn block_m(p: Precision) -> usize {
    match p {
        Precision::F32 => DS_CONV_BM,
        Precision::F16 | Precision::Bf16 => DS_CONV_BM_MMA,
    }
}

pub(super) fn conv2d<D: Device>(be: &GpuBackend<D>, p: &Conv2d<'_, GpuBackend<D>>) -> Result<()> {
    let out = &p.out;
    let ConvShape { cout, cin, k, hu, wu, ho, wo } = check_conv2d(p)?;
    ensure!(k == 1 || k == 3, "conv2d: the GPU kernel supports k = 1 or 3, got {k}");
    let (xa, xb, wt) = (&p.x.a, p.x.b.as_ref(), p.w);
    let [pt, pl, _, _] = p.pad;
    let up = p.upsample as usize;
    if out.is_empty() {
        return Ok(());
    }

    // The kernel indexes pixels, the K dimension and planes with 32-bit ints.
    let npix = int(out.n * ho * wo, "n*ho*wo")?;
    int(cin * k * k, "cin*k*k")?;
    int(hu * wu, "up-sampled input plane")?;
    let bm = block_m(be.precision());
    let grid_y = cout.div_ceil(bm);
    ensure!(grid_y <= 65535, "conv2d: {cout} output channels exceed the launch grid");
    let params = ConvParams {
        xa: be.addr(xa, "conv2d x")?,
        xb: xb.map(|b| be.addr(b, "conv2d x (second source)")).transpose()?.unwrap_or(0),
        w: be.wptr(wt),
        bias: be.wptr(p.bias),
        temb: p.temb.as_ref().map(|t| be.addr(t, "conv2d temb")).transpose()?.unwrap_or(0),
        residual: p.residual.as_ref().map(|r| be.addr(r, "conv2d residual")).transpose()?.unwrap_or(0),
        out: be.addr(out, "conv2d out")?,
        n: int(out.n, "n")?,
        na: int(xa.n, "na")?,
        nb: int(xb.map_or(1, |b| b.n), "nb")?,
        ca: int(xa.c, "ca")?,
        cb: int(xb.map_or(0, |b| b.c), "cb")?,
        h: int(xa.h, "h")?,
        w_: int(xa.w, "w")?,
        cout: int(cout, "cout")?,
        ho: int(ho, "ho")?,
        wo: int(wo, "wo")?,
        k: k as i32,
        stride: int(p.stride, "stride")?,
        pad_t: pt as i32,
        pad_l: pl as i32,
        upsample: up as i32,
        temb_n: int(p.temb.as_ref().map_or(1, |t| t.n), "temb batch")?,
        res_n: int(p.residual.as_ref().map_or(1, |r| r.n), "residual batch")?,
        tap: wt.tap_major as i32,
    };
    let grid = [(npix as usize).div_ceil(DS_CONV_BN) as u32, grid_y as u32, 1];
    be.launch(&format!("conv2d_{}", be.suffix()), grid, [DS_CONV_THREADS as u32, 1, 1], 0, &params)
}

/// Micro-benchmarks: the U-Net's convolutions at batch 1 (3x3 at 256x256 with temb,
/// 3x3 at 32x32 and 16x16 on a decoder concat, the 1x1 skip at 16x16, the stride-2
/// down-sampling and the up-sampling conv); both B gathers (tap-major weights and
/// per-element) where the weights allow the first.
pub(super) fn micro<D: Device>(s: &mut super::micro::Sink<'_, D>) -> Result<()> {
    use crate::backend::{Act, Backend, Cat, WeightKind};
    use crate::dtype::Precision;
    let div = if s.small { 8 } else { 1 };
    struct M {
        case: &'static str,
        ca: usize,
        cb: usize,
        side: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: [usize; 4],
        up: bool,
    }
    const B: M = M { case: "", ca: 128, cb: 0, side: 256, cout: 128, k: 3, stride: 1, pad: [1; 4], up: false };
    let cases = [
        M { case: "3x3 256x256 128->128 +temb", ..B },
        M { case: "3x3 32x32 (256+256)->256", ca: 256, cb: 256, side: 32, cout: 256, ..B },
        M { case: "3x3 16x16 (512+512)->512", ca: 512, cb: 512, side: 16, cout: 512, ..B },
        M { case: "1x1 16x16 1024->512", ca: 1024, side: 16, cout: 512, k: 1, pad: [0; 4], ..B },
        M { case: "3x3/s2 256->128 128ch", stride: 2, pad: [0, 0, 1, 1], ..B },
        M { case: "3x3+up2 128->256 128ch", side: 128, up: true, ..B },
    ];
    for M { case, ca, cb, side, cout, k, stride, pad, up } in cases {
        let (ca, cb, cout, side) = (ca / div, cb / div, cout / div, (side / div).max(4));
        let cin = ca + cb;
        let u = if up { 2 } else { 1 };
        let ho = (side * u + pad[0] + pad[2] - k) / stride + 1;
        let wo = (side * u + pad[1] + pad[3] - k) / stride + 1;
        let xa = s.random(ca * side * side, 1)?;
        let xb = s.random(cb.max(1) * side * side, 2)?;
        let temb = s.random(cout, 3)?;
        let out = s.be.alloc(cout * ho * wo)?;
        let wt = crate::tensor::HostTensor {
            shape: vec![cout, cin, k, k],
            data: (0..cout * cin * k * k).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect(),
        };
        let bias = crate::tensor::HostTensor { shape: vec![cout], data: vec![0.1; cout] };
        let b = s.be.upload_weight(&bias, WeightKind::Vector)?;
        let x =
            Cat { a: Act::new(&xa, 0, 1, ca, side, side), b: (cb > 0).then(|| Act::new(&xb, 0, 1, cb, side, side)) };
        let o = Act::new(&out, 0, 1, cout, ho, wo);
        let gflop = 2e-9 * (cout * ho * wo * cin * k * k) as f64;
        let wbytes = if s.be.precision() == Precision::F32 { 4.0 } else { 2.0 };
        let bytes = 4.0 * (cin * side * side + cout * ho * wo) as f64 + wbytes * (cout * cin * k * k) as f64;
        let mut variants = vec![("auto", true)];
        if k == 3 && cin.is_multiple_of(super::params::launch::DS_CONV_BK) {
            variants.push(("per-element", false));
        }
        for (name, allow_tap) in variants {
            let w = s.be.upload_weight_as(&wt, WeightKind::Conv, allow_tap)?;
            let be = s.be;
            let t = (case.contains("temb")).then(|| Act::new(&temb, 0, 1, cout, 1, 1));
            let variant = if name == "auto" && w.tap_major { "tap-major" } else { name };
            s.time("conv", case, variant, gflop, bytes, o, &mut || {
                be.conv2d(&Conv2d::<GpuBackend<D>> {
                    x,
                    w: &w,
                    bias: &b,
                    k,
                    stride,
                    pad,
                    upsample: up,
                    temb: t,
                    residual: None,
                    out: o,
                })
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::device::Device;
    use super::super::testutil::*;
    use super::super::GpuBackend;
    use crate::backend::{Act, Backend, Cat, Conv2d, WeightKind};
    use crate::dtype::Precision;

    /// One conv configuration; batch sizes of 0 mean "absent".
    #[derive(Clone, Copy)]
    struct Case {
        n: usize,
        na: usize,
        ca: usize,
        nb: usize,
        cb: usize,
        h: usize,
        w: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: [usize; 4],
        up: bool,
        temb_n: usize,
        res_n: usize,
    }

    const BASE: Case = Case {
        n: 1,
        na: 1,
        ca: 3,
        nb: 0,
        cb: 0,
        h: 7,
        w: 9,
        cout: 5,
        k: 3,
        stride: 1,
        pad: [1, 1, 1, 1],
        up: false,
        temb_n: 0,
        res_n: 0,
    };

    /// Runs `cs` on one backend with the data of `seed` (weights rounded through
    /// `prec`, as `UNet::new` does) and returns the output.
    fn conv_on<B: Backend>(be: &B, cs: Case, seed: u64, prec: Precision) -> Vec<f32> {
        let cin = cs.ca + cs.cb;
        let (k, s) = (cs.k, cs.stride);
        let u = if cs.up { 2 } else { 1 };
        let ho = (cs.h * u + cs.pad[0] + cs.pad[2] - k) / s + 1;
        let wo = (cs.w * u + cs.pad[1] + cs.pad[3] - k) / s + 1;
        let hw = cs.h * cs.w;
        let ba = place(be, &rand_vec(seed, cs.na * cs.ca * hw));
        let bb = place(be, &rand_vec(seed + 1, cs.nb * cs.cb * hw));
        let bt = place(be, &rand_vec(seed + 4, cs.temb_n * cs.cout));
        let br = place(be, &rand_vec(seed + 5, cs.res_n * cs.cout * ho * wo));
        let wt = weight(be, &[cs.cout, cin, k, k], &rand_vec(seed + 2, cs.cout * cin * k * k), WeightKind::Conv, prec);
        let bias = weight(be, &[cs.cout], &rand_vec(seed + 3, cs.cout), WeightKind::Vector, prec);
        let olen = cs.n * cs.cout * ho * wo;
        let bo = poisoned(be, olen);
        let x =
            Cat { a: act(&ba, cs.na, cs.ca, cs.h, cs.w), b: (cs.cb > 0).then(|| act(&bb, cs.nb, cs.cb, cs.h, cs.w)) };
        be.conv2d(&Conv2d::<B> {
            x,
            w: &wt,
            bias: &bias,
            k,
            stride: s,
            pad: cs.pad,
            upsample: cs.up,
            temb: (cs.temb_n > 0).then(|| act(&bt, cs.temb_n, cs.cout, 1, 1)),
            residual: (cs.res_n > 0).then(|| act(&br, cs.res_n, cs.cout, ho, wo)),
            out: act(&bo, cs.n, cs.cout, ho, wo),
        })
        .unwrap();
        read(be, &bo, olen)
    }

    /// `gpu` against the CPU oracle at `gpu`'s storage precision.
    fn check_on<D: Device>(gpu: &GpuBackend<D>, cs: Case, seed: u64) -> f64 {
        let prec = gpu.precision();
        let want = conv_on(&cpu_for(gpu), cs, seed, prec);
        let got = conv_on(gpu, cs, seed, prec);
        let e = rel_l2(&got, &want);
        eprintln!("conv {} seed {seed} {prec:?}: rel L2 {e:.2e}", gpu.device().kind());
        assert!(e < bound(prec), "seed {seed} {prec:?}: rel L2 {e:e} >= {:e}", bound(prec));
        e
    }

    /// The emulated kernel against the CPU oracle at every storage precision.
    fn check(cases: &[(Case, u64)]) {
        for prec in [Precision::F32, Precision::F16, Precision::Bf16] {
            let gpu = emu(prec);
            for &(cs, seed) in cases {
                check_on(&gpu, cs, seed);
            }
        }
    }

    /// cout 5, cin 3, 7x9 input: every tile edge is partial, K = 27.
    const ODD_SIZES: &[(Case, u64)] = &[(BASE, 1)];

    const ONE_BY_ONE: &[(Case, u64)] = &[
        (Case { k: 1, pad: [0; 4], ca: 33, cout: 17, h: 6, w: 5, res_n: 1, ..BASE }, 2),
        (Case { k: 1, pad: [0; 4], n: 2, na: 1, ca: 3, nb: 2, cb: 5, cout: 6, h: 9, w: 8, ..BASE }, 3),
    ];

    /// DDPM down-sampling: pad (0, 1) on each axis, i.e. pad_t = pad_l = 0; and pad 1.
    const STRIDE2: &[(Case, u64)] = &[
        (Case { stride: 2, pad: [0, 0, 1, 1], h: 9, w: 9, ca: 5, cout: 6, ..BASE }, 10),
        (Case { stride: 2, pad: [1, 1, 1, 1], h: 9, w: 9, ca: 3, cout: 7, ..BASE }, 11),
        (Case { stride: 2, pad: [0, 0, 1, 1], h: 8, w: 10, ca: 5, cout: 6, ..BASE }, 12),
        (Case { stride: 2, pad: [1, 1, 1, 1], h: 8, w: 10, ca: 3, cout: 7, ..BASE }, 13),
    ];

    const UPSAMPLE: &[(Case, u64)] = &[
        (Case { up: true, h: 5, w: 6, ca: 5, cout: 7, ..BASE }, 20),
        (Case { up: true, h: 6, w: 5, ca: 3, nb: 1, cb: 2, cout: 9, res_n: 1, ..BASE }, 21),
    ];

    /// Unpadded 3x3, 1x1 stride 2, and stride 2 over an up-sampled input with uneven
    /// padding (everything the CPU op accepts, though the U-Net does not use it).
    const OTHER_PADDINGS: &[(Case, u64)] = &[
        (Case { pad: [0; 4], ca: 5, cout: 7, h: 9, w: 12, ..BASE }, 50),
        (Case { k: 1, stride: 2, pad: [0; 4], ca: 6, nb: 1, cb: 3, cout: 5, h: 9, w: 8, ..BASE }, 51),
        (Case { stride: 2, pad: [2, 0, 1, 3], up: true, h: 5, w: 7, ..BASE }, 52),
    ];

    const CAT_BROADCAST: &[(Case, u64)] = &[
        // Skip concat, the first source broadcast over the batch (na = 1, n = 2).
        (Case { n: 2, na: 1, ca: 4, nb: 2, cb: 3, cout: 9, temb_n: 2, res_n: 2, ..BASE }, 30),
        // temb and residual broadcast.
        (Case { n: 3, na: 3, ca: 5, nb: 1, cb: 2, cout: 6, h: 5, w: 6, temb_n: 1, res_n: 1, ..BASE }, 31),
    ];

    /// Several blocks along M (cout > 128) and N, K over several 32-wide slices, a
    /// channel split (ca = 64 + cb = 32) not aligned to the K slices.
    const SEVERAL_BLOCKS: &[(Case, u64)] =
        &[(Case { ca: 64, nb: 1, cb: 32, cout: 130, h: 9, w: 10, temb_n: 1, res_n: 1, ..BASE }, 40)];

    /// 3x3 weights with cin % 32 == 0 are stored tap-major and take the kernels' per-tap
    /// gather: concat split inside a K slice (16 + 16) and on its edge (32 + 32),
    /// broadcast batch, stride 2 with the DDPM padding, up-sampling, unpadded.
    const TAP_MAJOR: &[(Case, u64)] = &[
        (Case { ca: 32, cout: 7, h: 6, w: 7, ..BASE }, 70),
        (Case { n: 2, na: 1, ca: 16, nb: 2, cb: 16, cout: 9, h: 5, w: 6, temb_n: 2, res_n: 2, ..BASE }, 71),
        (Case { stride: 2, pad: [0, 0, 1, 1], ca: 32, nb: 1, cb: 32, cout: 12, h: 9, w: 8, ..BASE }, 72),
        (Case { up: true, ca: 32, cout: 5, h: 4, w: 5, res_n: 1, ..BASE }, 73),
        (Case { pad: [0; 4], ca: 64, cout: 130, h: 7, w: 9, ..BASE }, 74),
    ];

    /// The U-Net's convolutions at DDPM-256 sizes (too slow for the emulator): the
    /// 256x256 3x3 with temb, a 1x1 skip with cin 1024, the stride-2 down-sampling at
    /// 256x256, the 128 -> 256 up-sampling, and a decoder cat of 512 + 256 at 16x16
    /// with temb and residual (batch 2, the first source broadcast).
    const UNET: &[(Case, u64)] = &[
        (Case { ca: 128, cout: 128, h: 256, w: 256, temb_n: 1, ..BASE }, 60),
        (Case { k: 1, pad: [0; 4], n: 2, na: 2, ca: 1024, cout: 512, h: 16, w: 16, res_n: 2, ..BASE }, 61),
        (Case { stride: 2, pad: [0, 0, 1, 1], ca: 128, cout: 128, h: 256, w: 256, ..BASE }, 62),
        (Case { up: true, ca: 128, cout: 128, h: 128, w: 128, ..BASE }, 63),
        (Case { n: 2, na: 1, ca: 512, nb: 2, cb: 256, cout: 512, h: 16, w: 16, temb_n: 2, res_n: 2, ..BASE }, 64),
    ];

    #[test]
    fn conv_tap_major_weights() {
        for prec in [Precision::F32, Precision::F16, Precision::Bf16] {
            let gpu = emu(prec);
            let w = |cin| weight(&gpu, &[4, cin, 3, 3], &vec![0.5; 36 * cin], WeightKind::Conv, prec).tap_major;
            assert!(w(32) && w(96) && !w(33) && !w(3), "{prec:?}: which weights are tap-major");
        }
        check(TAP_MAJOR);
    }

    #[test]
    fn conv_odd_sizes() {
        check(ODD_SIZES);
    }

    #[test]
    fn conv_1x1() {
        check(ONE_BY_ONE);
    }

    #[test]
    fn conv_3x3_stride2_both_paddings() {
        check(STRIDE2);
    }

    #[test]
    fn conv_upsample() {
        check(UPSAMPLE);
    }

    #[test]
    fn conv_other_paddings() {
        check(OTHER_PADDINGS);
    }

    #[test]
    fn conv_cat_broadcast_temb_residual() {
        check(CAT_BROADCAST);
    }

    #[test]
    fn conv_several_blocks() {
        check(SEVERAL_BLOCKS);
    }

    /// On a real GPU (skipped without one): every emulated case, then the U-Net-sized
    /// ones, in f32 / f16 / bf16 against the CPU oracle with the design's bounds.
    #[test]
    fn cuda_conv() {
        let all = [ODD_SIZES, ONE_BY_ONE, STRIDE2, UPSAMPLE, OTHER_PADDINGS, CAT_BROADCAST, SEVERAL_BLOCKS, UNET];
        for prec in [Precision::F32, Precision::F16, Precision::Bf16] {
            let Some(gpu) = cuda(prec) else { return };
            for &(cs, seed) in all.concat().iter() {
                check_on(&gpu, cs, seed);
            }
        }
    }

    #[test]
    fn conv_rejects_bad_shapes() {
        let be = emu(Precision::F16);
        let xb = place(&be, &rand_vec(1, 3 * 16));
        let ob = poisoned(&be, 5 * 16 + 4);
        let tb = place(&be, &rand_vec(4, 10));
        let wt = weight(&be, &[5, 3, 3, 3], &rand_vec(2, 135), WeightKind::Conv, Precision::F16);
        let w5 = weight(&be, &[5, 3, 5, 5], &rand_vec(2, 375), WeightKind::Conv, Precision::F16);
        let bias = weight(&be, &[5], &rand_vec(3, 5), WeightKind::Vector, Precision::F16);
        let mk = |out: Act<'_, _>, k: usize, temb: Option<Act<'_, _>>| {
            let w = if k == 5 { &w5 } else { &wt };
            be.conv2d(&Conv2d::<_> {
                x: act(&xb, 1, 3, 4, 4).into(),
                w,
                bias: &bias,
                k,
                stride: 1,
                pad: [1; 4],
                upsample: false,
                temb,
                residual: None,
                out,
            })
        };
        mk(act(&ob, 1, 5, 4, 4), 3, None).unwrap();
        mk(act(&ob, 1, 5, 4, 4), 3, Some(act(&tb, 1, 5, 1, 1))).unwrap();
        assert!(mk(act(&ob, 1, 5, 3, 4), 3, None).is_err(), "wrong output size");
        assert!(mk(act(&ob, 1, 4, 4, 4), 3, None).is_err(), "wrong cout");
        assert!(mk(act(&ob, 1, 5, 4, 4), 1, None).is_err(), "k does not match the weight");
        assert!(mk(act(&ob, 1, 5, 2, 2), 5, None).is_err(), "k = 5 is not supported");
        assert!(mk(Act::new(&ob, 20, 1, 5, 4, 4), 3, None).is_err(), "output past its buffer");
        assert!(mk(act(&ob, 1, 5, 4, 4), 3, Some(act(&tb, 2, 5, 1, 1))).is_err(), "temb batch 2 > n 1");
        assert!(mk(act(&ob, 1, 5, 4, 4), 3, Some(act(&tb, 1, 4, 1, 1))).is_err(), "temb channels");
        // The output overlapping the input.
        let big = place(&be, &rand_vec(9, 100));
        let r = be.conv2d(&Conv2d::<_> {
            x: act(&big, 1, 3, 4, 4).into(),
            w: &wt,
            bias: &bias,
            k: 3,
            stride: 1,
            pad: [1; 4],
            upsample: false,
            temb: None,
            residual: None,
            out: Act::new(&big, OFF + 10, 1, 5, 4, 4),
        });
        assert!(r.is_err(), "output overlapping the input");
    }
}
