//! The activation memory plan: every value of the graph gets a region of one arena,
//! reused once its last reader has run (first fit over live regions). Planned once per
//! (encoder batch, decoder batch); nothing is allocated while the plan executes.

use super::graph::{BatchClass, Graph};

/// Regions start on 64-float (256-byte) boundaries, as GPU vector loads want.
const ALIGN: usize = 64;

#[derive(Clone, Debug)]
pub struct Plan {
    pub n_enc: usize,
    pub n_dec: usize,
    /// Offset and length (floats) of each value.
    pub offsets: Vec<usize>,
    pub lens: Vec<usize>,
    /// Op index that produces each value (usize::MAX for the input) and the last
    /// op that reads it.
    pub first: Vec<usize>,
    pub last: Vec<usize>,
    pub arena_len: usize,
}

impl Plan {
    pub fn new(g: &Graph, n_enc: usize, n_dec: usize) -> anyhow::Result<Plan> {
        anyhow::ensure!(n_enc >= 1 && n_dec >= n_enc, "bad batch sizes {n_enc}/{n_dec}");
        let nv = g.values.len();
        let end = g.ops.len();
        let mut first = vec![usize::MAX; nv];
        let mut last = vec![0usize; nv];
        for (k, op) in g.ops.iter().enumerate() {
            first[op.output()] = k;
            for i in op.inputs() {
                last[i] = last[i].max(k);
            }
        }
        let mut lens = vec![0usize; nv];
        for (i, v) in g.values.iter().enumerate() {
            if v.pinned {
                last[i] = end;
            }
            let n = match v.class {
                BatchClass::Enc => n_enc,
                BatchClass::Dec => n_dec,
            };
            lens[i] = n
                .checked_mul(v.c)
                .and_then(|x| x.checked_mul(v.h))
                .and_then(|x| x.checked_mul(v.w))
                .ok_or_else(|| anyhow::anyhow!("activation {} is too large to address", v.name))?;
        }
        let mut offsets = vec![0usize; nv];
        // Live regions sorted by offset: (offset, len, value).
        let mut live: Vec<(usize, usize, usize)> = vec![];
        let mut arena_len = 0usize;
        let mut place = |v: usize, live: &mut Vec<(usize, usize, usize)>| -> anyhow::Result<()> {
            let len = lens[v].div_ceil(ALIGN) * ALIGN;
            let mut at = 0usize;
            let mut idx = live.len();
            for (k, &(o, l, _)) in live.iter().enumerate() {
                if o >= at + len {
                    idx = k;
                    break;
                }
                at = at.max((o + l).div_ceil(ALIGN) * ALIGN);
            }
            live.insert(idx, (at, len, v));
            offsets[v] = at;
            arena_len =
                arena_len.max(at.checked_add(len).ok_or_else(|| anyhow::anyhow!("activation arena overflows"))?);
            Ok(())
        };
        place(g.x, &mut live)?;
        for (k, op) in g.ops.iter().enumerate() {
            place(op.output(), &mut live)?;
            live.retain(|&(_, _, v)| last[v] > k);
        }
        Ok(Plan { n_enc, n_dec, offsets, lens, first, last, arena_len })
    }

    /// Human-readable listing for `diffstyle info`.
    pub fn describe(&self, g: &Graph) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let mib = |f: usize| f as f64 * 4.0 / (1024.0 * 1024.0);
        let _ = writeln!(
            s,
            "activation arena: {:.2} MiB (batch {} encoder / {} decoder), {} values, {} ops",
            mib(self.arena_len),
            self.n_enc,
            self.n_dec,
            g.values.len(),
            g.ops.len()
        );
        let total: usize = self.lens.iter().sum();
        let _ = writeln!(s, "without reuse it would be {:.2} MiB", mib(total));
        let _ = writeln!(s, "{:>5} {:>5} {:>12} {:>10}  value", "from", "to", "offset", "MiB");
        for (i, v) in g.values.iter().enumerate() {
            let from = if self.first[i] == usize::MAX { "in".to_string() } else { self.first[i].to_string() };
            let to = if v.pinned { "end".to_string() } else { self.last[i].to_string() };
            let _ = writeln!(s, "{from:>5} {to:>5} {:>12} {:>10.3}  {}", self.offsets[i], mib(self.lens[i]), v.name);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::arch::UNetArch;

    /// No two values that are live at the same time share memory.
    #[test]
    fn live_values_never_overlap() {
        let g = Graph::build(&UNetArch::ddpm_256());
        for (ne, nd) in [(1, 1), (1, 2), (3, 6)] {
            let p = Plan::new(&g, ne, nd).unwrap();
            let nv = g.values.len();
            let start = |v: usize| if p.first[v] == usize::MAX { 0 } else { p.first[v] };
            for a in 0..nv {
                for b in a + 1..nv {
                    let overlap_time = start(a) <= p.last[b] && start(b) <= p.last[a];
                    let overlap_mem =
                        p.offsets[a] < p.offsets[b] + p.lens[b] && p.offsets[b] < p.offsets[a] + p.lens[a];
                    assert!(!(overlap_time && overlap_mem), "{} and {} overlap", g.values[a].name, g.values[b].name);
                }
                assert!(p.offsets[a] + p.lens[a] <= p.arena_len);
            }
            let total: usize = p.lens.iter().sum();
            assert!(p.arena_len < total / 2, "reuse should at least halve the memory");
        }
    }
}
