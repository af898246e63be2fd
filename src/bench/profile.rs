//! Where a forward's time goes: a backend that delegates every op to another and times
//! each one on its own (`Backend::time_ms`: device events on a GPU), with the op's FLOPs
//! and the fewest bytes it must move (each input read once, the output written once,
//! the weights read once), so that each op kind can be placed against the compute and
//! bandwidth ceilings. Ops run as direct launches, one synchronisation each: the sum
//! is larger than a graph-replayed forward by the launch gaps.

use std::cell::RefCell;
use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use crate::backend::{Act, Backend, Cat, Conv2d, DdimStep, WeightKind};
use crate::tensor::HostTensor;

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Stat {
    pub ms: f64,
    pub flops: f64,
    pub bytes: f64,
    pub calls: usize,
}

/// One row of a profile table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Op kind, with ` @HxW` (output resolution) in the detailed table.
    pub op: String,
    pub calls: usize,
    pub ms: f64,
    pub share: f64,
    pub gflop: f64,
    pub tflops: f64,
    pub mbytes: f64,
    pub gb_s: f64,
}

pub struct Profiled<'a, B> {
    inner: &'a B,
    /// Bytes of one weight element as the backend stores conv weights.
    conv_weight_bytes: f64,
    stats: RefCell<BTreeMap<String, Stat>>,
}

fn res<T>(a: &Act<'_, T>) -> String {
    format!("{}x{}", a.h, a.w)
}

const F32: f64 = 4.0;

impl<'a, B: Backend> Profiled<'a, B> {
    pub fn new(inner: &'a B, conv_weight_bytes: usize) -> Self {
        Self { inner, conv_weight_bytes: conv_weight_bytes as f64, stats: RefCell::new(BTreeMap::new()) }
    }

    fn time(&self, key: impl FnOnce() -> String, flops: f64, bytes: f64, f: impl FnOnce() -> Result<()>) -> Result<()> {
        let mut f = Some(f);
        let ms = self.inner.time_ms(&mut || f.take().map_or(Ok(()), |f| f()))?;
        let mut stats = self.stats.borrow_mut();
        let s = stats.entry(key()).or_default();
        s.ms += ms;
        s.flops += flops;
        s.bytes += bytes;
        s.calls += 1;
        Ok(())
    }

    /// Forgets what was timed so far (after a warm-up).
    pub fn reset(&self) {
        self.stats.borrow_mut().clear();
    }

    /// (by op kind, by op kind and resolution) per forward when `runs` forwards were
    /// timed, each sorted by time, largest first.
    pub fn tables(&self, runs: usize) -> (Vec<Row>, Vec<Row>) {
        let per = 1.0 / runs.max(1) as f64;
        let stats = self.stats.borrow();
        let total: f64 = stats.values().map(|s| s.ms).sum();
        let mut by_kind: BTreeMap<String, Stat> = BTreeMap::new();
        for (k, s) in stats.iter() {
            let e = by_kind.entry(k.split(" @").next().unwrap_or(k).to_string()).or_default();
            e.ms += s.ms;
            e.flops += s.flops;
            e.bytes += s.bytes;
            e.calls += s.calls;
        }
        let rows = |m: &BTreeMap<String, Stat>| {
            let mut v: Vec<Row> = m
                .iter()
                .map(|(k, s)| Row {
                    op: k.clone(),
                    calls: s.calls / runs.max(1),
                    ms: s.ms * per,
                    share: if total > 0.0 { s.ms / total } else { 0.0 },
                    gflop: s.flops * per / 1e9,
                    tflops: if s.ms > 0.0 { s.flops / s.ms / 1e9 } else { 0.0 },
                    mbytes: s.bytes * per / 1e6,
                    gb_s: if s.ms > 0.0 { s.bytes / s.ms / 1e6 } else { 0.0 },
                })
                .collect();
            v.sort_by(|a, b| b.ms.total_cmp(&a.ms));
            v
        };
        (rows(&by_kind), rows(&stats))
    }
}

/// A table as text.
pub fn format_rows(title: &str, rows: &[Row]) -> String {
    let mut s = format!("  {title}\n");
    s += &format!(
        "    {:<30} {:>6} {:>10} {:>6} {:>9} {:>9} {:>10} {:>9}\n",
        "op", "calls", "ms", "%", "GFLOP", "TFLOP/s", "MB", "GB/s"
    );
    for r in rows {
        s += &format!(
            "    {:<30} {:>6} {:>10.3} {:>6.1} {:>9.2} {:>9.2} {:>10.1} {:>9.1}\n",
            r.op,
            r.calls,
            r.ms,
            100.0 * r.share,
            r.gflop,
            r.tflops,
            r.mbytes,
            r.gb_s
        );
    }
    s
}

impl<B: Backend> Backend for Profiled<'_, B> {
    type Buf = B::Buf;
    type Weight = B::Weight;

    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn peak_device_bytes(&self) -> Option<usize> {
        self.inner.peak_device_bytes()
    }
    fn alloc(&self, len: usize) -> Result<Self::Buf> {
        self.inner.alloc(len)
    }
    fn upload(&self, dst: Act<'_, Self::Buf>, data: &[f32]) -> Result<()> {
        self.inner.upload(dst, data)
    }
    fn download(&self, src: Act<'_, Self::Buf>) -> Result<Vec<f32>> {
        self.inner.download(src)
    }
    fn upload_weight(&self, t: &HostTensor, kind: WeightKind) -> Result<Self::Weight> {
        self.inner.upload_weight(t, kind)
    }
    fn sync(&self) -> Result<()> {
        self.inner.sync()
    }
    fn copy(&self, src: Act<'_, Self::Buf>, dst: Act<'_, Self::Buf>) -> Result<()> {
        let bytes = F32 * (src.len() + dst.len()) as f64;
        self.time(|| "copy".into(), 0.0, bytes, || self.inner.copy(src, dst))
    }
    fn timestep_embedding(&self, t: &[f32], flip: bool, shift: f32, out: Act<'_, Self::Buf>) -> Result<()> {
        let n = out.len() as f64;
        self.time(|| "time_embedding".into(), 4.0 * n, F32 * n, || self.inner.timestep_embedding(t, flip, shift, out))
    }
    fn linear(
        &self,
        x: Act<'_, Self::Buf>,
        w: &Self::Weight,
        b: &Self::Weight,
        silu_input: bool,
        out: Act<'_, Self::Buf>,
    ) -> Result<()> {
        let weights = (out.c * x.sample_len() + out.c) as f64;
        let flops = 2.0 * (out.len() * x.sample_len()) as f64;
        let bytes = F32 * (x.len() + out.len()) as f64 + F32 * weights;
        self.time(|| "linear".into(), flops, bytes, || self.inner.linear(x, w, b, silu_input, out))
    }
    fn group_norm(
        &self,
        x: Cat<'_, Self::Buf>,
        gamma: &Self::Weight,
        beta: &Self::Weight,
        groups: usize,
        eps: f32,
        silu: bool,
        out: Act<'_, Self::Buf>,
    ) -> Result<()> {
        let key = || format!("group_norm{} @{}", if silu { "+silu" } else { "" }, res(&out));
        let bytes = F32 * (2 * out.len()) as f64;
        let flops = 8.0 * out.len() as f64;
        self.time(key, flops, bytes, || self.inner.group_norm(x, gamma, beta, groups, eps, silu, out))
    }
    fn group_norm_film(
        &self,
        x: Act<'_, Self::Buf>,
        gamma: &Self::Weight,
        beta: &Self::Weight,
        groups: usize,
        eps: f32,
        film: Act<'_, Self::Buf>,
        silu: bool,
        out: Act<'_, Self::Buf>,
    ) -> Result<()> {
        let key = || format!("group_norm+film{} @{}", if silu { "+silu" } else { "" }, res(&out));
        let bytes = F32 * (2 * out.len() + film.len()) as f64;
        let flops = 8.0 * out.len() as f64;
        self.time(key, flops, bytes, || self.inner.group_norm_film(x, gamma, beta, groups, eps, film, silu, out))
    }
    fn resample(&self, x: Act<'_, Self::Buf>, up: bool, out: Act<'_, Self::Buf>) -> Result<()> {
        let key = || format!("{} @{}", if up { "upsample" } else { "avg_pool" }, res(&out));
        let bytes = F32 * (x.len() + out.len()) as f64;
        let flops = if up { 0.0 } else { 4.0 * out.len() as f64 };
        self.time(key, flops, bytes, || self.inner.resample(x, up, out))
    }
    fn conv2d(&self, p: &Conv2d<'_, Self>) -> Result<()> {
        let cin = p.x.channels();
        let flops = 2.0 * (p.out.len() * cin * p.k * p.k) as f64;
        let input = p.x.a.len() + p.x.b.map_or(0, |b| b.len());
        let extra = p.temb.map_or(0, |t| t.len()) + p.residual.map_or(0, |r| r.len());
        let weights = (p.out.c * cin * p.k * p.k) as f64;
        let bytes = F32 * (input + extra + p.out.len() + p.out.c) as f64 + self.conv_weight_bytes * weights;
        let key = || {
            let mut k = format!("conv{}x{}", p.k, p.k);
            if p.stride != 1 {
                k.push_str(&format!("/s{}", p.stride));
            }
            if p.upsample {
                k.push_str("+up2");
            }
            format!("{k} @{}", res(&p.out))
        };
        let q = Conv2d::<B> {
            x: p.x,
            w: p.w,
            bias: p.bias,
            k: p.k,
            stride: p.stride,
            pad: p.pad,
            upsample: p.upsample,
            temb: p.temb,
            residual: p.residual,
            out: p.out,
        };
        self.time(key, flops, bytes, || self.inner.conv2d(&q))
    }
    fn attention(&self, qkv: Act<'_, Self::Buf>, heads: usize, out: Act<'_, Self::Buf>) -> Result<()> {
        let tokens = (out.h * out.w) as f64;
        let flops = 4.0 * out.n as f64 * tokens * tokens * out.c as f64;
        let bytes = F32 * (qkv.len() + out.len()) as f64;
        self.time(|| format!("attention @{}", res(&out)), flops, bytes, || self.inner.attention(qkv, heads, out))
    }
    fn hspace_mix(
        &self,
        h: Act<'_, Self::Buf>,
        hc: Act<'_, Self::Buf>,
        gamma: f32,
        mask: Option<Act<'_, Self::Buf>>,
        out: Act<'_, Self::Buf>,
    ) -> Result<()> {
        let bytes = F32 * (h.len() + hc.len() + out.len()) as f64;
        self.time(|| "hspace_mix".into(), 0.0, bytes, || self.inner.hspace_mix(h, hc, gamma, mask, out))
    }
    fn ddim_step(&self, p: &DdimStep<'_, Self::Buf>) -> Result<()> {
        let bytes = F32 * (p.x.len() + p.eps_x0.len() + p.eps_dir.len() + p.out.len()) as f64;
        self.time(|| "ddim_step".into(), 0.0, bytes, || self.inner.ddim_step(p))
    }
    fn calibrate(
        &self,
        x: Act<'_, Self::Buf>,
        eps: Act<'_, Self::Buf>,
        eps_mod: Act<'_, Self::Buf>,
        a: f32,
        omega: f32,
        out: Act<'_, Self::Buf>,
    ) -> Result<()> {
        let bytes = F32 * (x.len() + eps.len() + eps_mod.len() + out.len()) as f64;
        self.time(|| "calibrate".into(), 0.0, bytes, || self.inner.calibrate(x, eps, eps_mod, a, omega, out))
    }
}
