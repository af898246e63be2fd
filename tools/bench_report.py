#!/usr/bin/env python3
"""Merges our GPU bench (OURS_DIR/ours.json, `diffstyle bench`) and the PyTorch baselines
(TORCH_JSON, tools/bench_torch_gpu.py) into the issue's results.json and a markdown
section for BENCHMARKS.md.

Usage:
  python3 tools/bench_report.py OURS_DIR TORCH_JSON --commit C --date D \\
      --command "diffstyle --device cuda bench ..." --command "python3 tools/bench_torch_gpu.py ..." \\
      [--results benches/results.json] [--markdown OUT.md]

results.json (keys this script writes; other top-level keys already in the file are kept):
  device, date, commit, commands, torch_version, gflop_forward (ours' count; else
  torch's flop counter, see gflop_source)
  forward_ms_b1     {ours_bf16, ours_f16, ours_f32, eager_f32, eager_f16, compile_f16}: median
                    ms per U-Net forward at batch 1 (null where not measured)
  pair_s            {ours, eager_f32, eager_f16}: seconds per pair, in-domain preset;
                    "ours" is our fastest precision's in-domain pair, named in
                    pair_s_ours_precision
  psnr_vs_baseline  {"forward_b1": {baseline: {our precision: dB}},
                     "pair": {preset: {baseline: {our precision: dB}}}} (dB as
                    bench_torch_gpu.py defines it: peak = max - min of our tensor; 255 for
                    the uint8 images)
  peak_mem_gib      {ours_<p>: ours.json peak_mem_bytes[p], <baseline>: max_memory_allocated
                    of its batch-1 forward} in GiB (2^30 bytes)
  tflops            batch-1 TFLOP/s of every series (gflop_forward * batch / ms)
  forward_ms        {series: {batch: ms}} all batches; encoder_ms, decoder_ms likewise (ours)
  pair_s_all        {preset: {series: s}} (ours per precision and the baselines)
  pairs_per_s       {series: {"<preset>/b<batch>": pairs per second}}
  ceilings          the measured bf16 matmul peak (TFLOP/s) and copy bandwidth (TB/s)
  fraction_of_bf16_peak {series: {batch: TFLOP/s / bf16_matmul_tflops}}
  speedups          forward_b1 ours_bf16 vs eager_f16 and vs compile_f16 (their ms / ours),
                    the same at every batch, and pair in-domain ours vs eager_f32
  targets           {name: {target, value, met, detail}} for each of the issue's targets;
                    met is null when a number is missing.
"""

import argparse
import json
import math
import os
import sys

GIB = float(1 << 30)
PRECISIONS = ("bf16", "f16", "f32")
BASELINES = ("eager_f32", "eager_f16", "compile_f16")
PAIR_BASELINES = ("eager_f32", "eager_f16")


def num(v):
    """A float from a JSON value ("inf" -> inf); None for missing or non-numbers."""
    if v is None:
        return None
    if isinstance(v, str):
        return math.inf if v == "inf" else None
    return float(v)


def r(v, nd=4):
    return None if v is None else (v if math.isinf(v) else round(v, nd))


def finite(o):
    """JSON has no inf: an infinite PSNR (equal tensors) is written as "inf"."""
    if isinstance(o, float) and not math.isfinite(o):
        return "inf" if o > 0 else ("-inf" if o < 0 else None)
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [finite(v) for v in o]
    return o


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def load(ours_dir, torch_json):
    with open(os.path.join(ours_dir, "ours.json")) as f:
        ours = json.load(f)
    with open(torch_json) as f:
        tj = json.load(f)
    return ours, tj


def series_ms(ours, tj, key="forward"):
    """{series: {batch: ms}} for ours (per precision) and, for key "forward", the baselines."""
    out = {}
    for row in ours.get(key) or []:
        if num(row.get("ms")) is not None:
            out.setdefault(f"ours_{row['precision']}", {})[int(row["batch"])] = num(row["ms"])
    if key == "forward":
        for row in tj.get("forward") or []:
            if "error" not in row and num(row.get("ms")) is not None:
                out.setdefault(row["impl"], {})[int(row["batch"])] = num(row["ms"])
    return out


def build(ours, tj, commit, date, commands):
    res = {}
    res["device"] = ours.get("device") or tj.get("gpu")
    res["date"] = date
    res["commit"] = commit
    res["commands"] = commands
    res["torch_version"] = tj.get("torch_version")
    res["torch_device"] = tj.get("gpu")
    model = ours.get("model") or {}
    gflop = num(model.get("gflop_forward"))
    res["gflop_source"] = "ours.json model.gflop_forward"
    if gflop is None:
        gflop = num((tj.get("model") or {}).get("gflop_forward_counted"))
        res["gflop_source"] = "torch.json model.gflop_forward_counted (torch.utils.flop_counter)"
    res["gflop_forward"] = gflop

    fwd = series_ms(ours, tj)
    names = [f"ours_{p}" for p in PRECISIONS] + list(BASELINES)
    res["forward_ms_b1"] = {n: r(fwd.get(n, {}).get(1)) for n in names}

    # pairs
    pair_all = {}
    for row in ours.get("pair") or []:
        if num(row.get("s")) is not None:
            pair_all.setdefault(row["preset"], {})[f"ours_{row['precision']}"] = num(row["s"])
    for row in tj.get("pair") or []:
        if "error" not in row and num(row.get("s")) is not None:
            pair_all.setdefault(row["preset"], {})[row["impl"]] = num(row["s"])
    ind = pair_all.get("in-domain", {})
    ours_pairs = {k: v for k, v in ind.items() if k.startswith("ours_")}
    best = min(ours_pairs, key=ours_pairs.get) if ours_pairs else None
    res["pair_s"] = {"ours": r(ours_pairs.get(best)) if best else None,
                     **{b: r(ind.get(b)) for b in PAIR_BASELINES}}
    res["pair_s_ours_precision"] = best[len("ours_"):] if best else None
    res["pair_s_all"] = {p: {k: r(v) for k, v in d.items()} for p, d in pair_all.items()}

    # psnr
    ps = {"forward_b1": {}, "pair": {}, "forward": {}}
    for row in tj.get("forward") or []:
        if "error" in row:
            continue
        vals = {k: r(num(v), 3) for k, v in (row.get("psnr_vs_ours") or {}).items()}
        ps["forward"].setdefault(row["impl"], {})[str(row["batch"])] = vals
        if row["batch"] == 1:
            ps["forward_b1"][row["impl"]] = vals
    for row in tj.get("pair") or []:
        if "error" not in row:
            ps["pair"].setdefault(row["preset"], {})[row["impl"]] = {
                k: r(num(v), 3) for k, v in (row.get("psnr_vs_ours") or {}).items()}
    res["psnr_vs_baseline"] = ps
    res["profile"] = ours.get("profile") or []

    # memory
    mem = {f"ours_{p}": r(num(v) / GIB) for p, v in (ours.get("peak_mem_bytes") or {}).items()
           if num(v) is not None}
    for row in tj.get("forward") or []:
        if "error" not in row and row["batch"] == 1 and num(row.get("peak_mem_bytes")) is not None:
            mem[row["impl"]] = r(num(row["peak_mem_bytes"]) / GIB)
    wb = model.get("weights_bytes") or {}
    for p, v in wb.items():
        if num(v) is not None:  # null on the CPU backend
            mem[f"weights_{p}"] = r(num(v) / GIB)
    res["peak_mem_gib"] = mem

    # tflops
    def tfl(ms, batch):
        return None if gflop is None or ms is None else gflop * batch / ms  # GFLOP / ms = TFLOP/s

    res["tflops"] = {n: r(tfl(fwd.get(n, {}).get(1), 1), 3) for n in names}
    res["forward_ms"] = {n: {str(b): r(v) for b, v in sorted(d.items())} for n, d in fwd.items()}
    res["encoder_ms"] = {n: {str(b): r(v) for b, v in sorted(d.items())}
                         for n, d in series_ms(ours, tj, "encoder").items()}
    res["decoder_ms"] = {n: {str(b): r(v) for b, v in sorted(d.items())}
                         for n, d in series_ms(ours, tj, "decoder").items()}

    pps = {}
    for row in ours.get("throughput") or []:
        if num(row.get("pairs_per_s")) is not None:
            pps.setdefault(f"ours_{row['precision']}", {})[f"{row['preset']}/b{row['batch']}"] = r(
                num(row["pairs_per_s"]))
    for row in tj.get("throughput") or []:
        if "error" not in row and num(row.get("pairs_per_s")) is not None:
            pps.setdefault(row["impl"], {})[f"{row['preset']}/b{row['batch']}"] = r(num(row["pairs_per_s"]))
    res["pairs_per_s"] = pps

    ceil = tj.get("ceilings") or {}
    res["ceilings"] = {k: ceil.get(k) for k in ("bf16_matmul_tflops", "copy_tb_s", "matmul_n",
                                                 "copy_bytes_read_plus_written") if k in ceil}
    peak = num(ceil.get("bf16_matmul_tflops"))
    res["fraction_of_bf16_peak"] = {
        n: {str(b): r(ratio(tfl(ms, b), peak)) for b, ms in sorted(d.items())} for n, d in fwd.items()
    } if peak else {}

    # speedups
    f1 = res["forward_ms_b1"]
    sp = {
        "forward_b1_ours_bf16_vs_eager_f16": r(ratio(f1.get("eager_f16"), f1.get("ours_bf16")), 3),
        "forward_b1_ours_bf16_vs_compile_f16": r(ratio(f1.get("compile_f16"), f1.get("ours_bf16")), 3),
        "pair_in-domain_ours_vs_eager_f32": r(ratio(res["pair_s"].get("eager_f32"), res["pair_s"].get("ours")), 3),
        "by_batch": {},
    }
    for b in sorted({b for d in fwd.values() for b in d}):
        ob = fwd.get("ours_bf16", {}).get(b)
        sp["by_batch"][str(b)] = {
            "ours_bf16_vs_eager_f16": r(ratio(fwd.get("eager_f16", {}).get(b), ob), 3),
            "ours_bf16_vs_compile_f16": r(ratio(fwd.get("compile_f16", {}).get(b), ob), 3),
            "ours_bf16_vs_eager_f32": r(ratio(fwd.get("eager_f32", {}).get(b), ob), 3),
        }
    res["speedups"] = sp
    res["targets"] = targets(res, fwd, ours, peak, tfl)
    return res


def met(v, ok):
    return None if v is None else bool(ok(v))


def targets(res, fwd, ours, peak, tfl):
    t = {}
    f1 = res["forward_ms_b1"]
    low = {p: f1.get(f"ours_{p}") for p in ("bf16", "f16") if f1.get(f"ours_{p}") is not None}
    bp = min(low, key=low.get) if low else None
    v = low.get(bp) if bp else None
    t["forward_b1_ms"] = {"target": "U-Net forward at batch 1 <= 1.0 ms in bf16/f16", "value": r(v),
                          "met": met(v, lambda x: x <= 1.0), "detail": f"ours_{bp}" if bp else "not measured"}

    best = None
    if peak:
        for p in ("bf16", "f16"):
            for b, ms in fwd.get(f"ours_{p}", {}).items():
                fr = ratio(tfl(ms, b), peak)
                if fr is not None and (best is None or fr > best[0]):
                    best = (fr, p, b)
    b1 = res.get("fraction_of_bf16_peak", {}).get("ours_bf16", {}).get("1")
    t["fraction_of_bf16_peak"] = {
        "target": ">= 60% of the measured bf16 matmul peak",
        "value": r(best[0]) if best else None,
        "met": met(best[0] if best else None, lambda x: x >= 0.6),
        "detail": (f"best over our bf16/f16 forward rows: ours_{best[1]} at batch {best[2]}; "
                   f"ours_bf16 at batch 1: {b1}") if best else "not measured",
    }

    ps = res["psnr_vs_baseline"]["forward_b1"]
    for name, base, goal in (("vs_eager_f16", "eager_f16", 4.0), ("vs_compile_f16", "compile_f16", 1.5)):
        v = res["speedups"][f"forward_b1_ours_bf16_vs_{base}"]
        t[name] = {"target": f">= {goal:g}x {base} (forward, batch 1, ours_bf16)", "value": v,
                   "met": met(v, lambda x, g=goal: x >= g),
                   "detail": f"PSNR of {base} vs ours_bf16 eps: {(ps.get(base) or {}).get('bf16')} dB"}

    v = res["pair_s"].get("ours")
    t["pair_in_domain_s"] = {"target": "in-domain pair <= 1.5 s", "value": v, "met": met(v, lambda x: x <= 1.5),
                             "detail": f"ours_{res['pair_s_ours_precision']}"}
    v = res["speedups"]["pair_in-domain_ours_vs_eager_f32"]
    pp = (res["psnr_vs_baseline"]["pair"].get("in-domain") or {}).get("eager_f32") or {}
    t["pair_vs_eager_f32"] = {"target": ">= 15x eager f32 (in-domain pair)", "value": v,
                              "met": met(v, lambda x: x >= 15.0),
                              "detail": f"PSNR of eager_f32's image vs ours: {pp} dB"}

    wb = (ours.get("model") or {}).get("weights_bytes") or {}
    for p, pk in (ours.get("peak_mem_bytes") or {}).items():
        w = num(wb.get(p, wb.get("bf16") if p == "f16" else None))
        pk = num(pk)
        lim = None if w is None else w + GIB
        t[f"peak_mem_{p}"] = {"target": f"peak device memory <= weights + 1 GiB at batch 1 (ours_{p})",
                              "value": r(pk / GIB) if pk is not None else None,
                              "met": None if pk is None or lim is None else pk <= lim,
                              "detail": f"GiB; limit {r(lim / GIB) if lim else None} GiB "
                                        f"(weights {r(w / GIB) if w else None} GiB, {p})"}
    return t


# ----------------------------------------------------------------------------- markdown


def fmt(v, nd=3, unit=""):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if math.isinf(v):
        return "inf"
    return f"{v:.{nd}f}{unit}"


def markdown(res, tj):
    L = []
    a = L.append
    a("## GPU: ours against PyTorch (issue 5)")
    a("")
    a(f"Device: {res['device']} (PyTorch saw: {res.get('torch_device')}). Date {res['date']}. "
      f"Commit `{res['commit']}`. torch {res.get('torch_version')}"
      + (f", CUDA {tj.get('settings', {}).get('cuda')}, cuDNN {tj.get('settings', {}).get('cudnn')}"
         if tj.get("settings", {}).get("cuda") else "") + ".")
    st = tj.get("settings") or {}
    a(f"PyTorch settings as run: cudnn.allow_tf32 {st.get('cudnn_allow_tf32')}, matmul allow_tf32 "
      f"{st.get('matmul_allow_tf32')}, cudnn.benchmark {st.get('cudnn_benchmark')}.")
    c = res.get("ceilings") or {}
    a(f"Ceilings measured on this machine: bf16 matmul **{fmt(c.get('bf16_matmul_tflops'), 1)} TFLOP/s** "
      f"({c.get('matmul_n', '?')}^3, median of >= 10), device-to-device copy **{fmt(c.get('copy_tb_s'), 2)} TB/s** "
      f"(bytes read + written).")
    a(f"FLOP per forward: {fmt(res.get('gflop_forward'), 1)} GFLOP at batch 1 ({res.get('gflop_source')}), "
      f"used for every TFLOP/s below.")
    a("")
    a("Commands:")
    a("")
    a("```sh")
    L.extend(res.get("commands") or ["(not given)"])
    a("```")
    a("")

    fwd = res["forward_ms"]
    batches = sorted({int(b) for d in fwd.values() for b in d})
    order = [n for n in [f"ours_{p}" for p in PRECISIONS] + list(BASELINES) if n in fwd]
    a("### U-Net forward (ms, median; CUDA events)")
    a("")
    hdr = "| series | " + " | ".join(f"b{b} ms" for b in batches) + " | " + \
          " | ".join(f"b{b} % bf16 peak" for b in batches) + " | peak mem b1 GiB | PSNR b1 vs ours f32 / bf16 / f16 |"
    a(hdr)
    a("|---|" + "---:|" * (2 * len(batches) + 1) + "---|")
    frac = res.get("fraction_of_bf16_peak") or {}
    for n in order:
        ms = [fmt(fwd[n].get(str(b))) for b in batches]
        fr = [fmt(None if frac.get(n, {}).get(str(b)) is None else 100 * frac[n][str(b)], 1) for b in batches]
        pv = res["psnr_vs_baseline"]["forward_b1"].get(n)
        pstr = " / ".join(fmt(pv.get(p), 1) if pv.get(p) is not None else "-" for p in ("f32", "bf16", "f16")) \
            if pv else "-"
        a(f"| {n} | " + " | ".join(ms) + " | " + " | ".join(fr) +
          f" | {fmt(res['peak_mem_gib'].get(n), 2)} | {pstr} |")
    a("")
    errs = [x for x in tj.get("forward") or [] if "error" in x]
    for x in errs:
        a(f"* {x['impl']} batch {x.get('batch')}: failed: `{x['error'][:200]}`")
    comp = [x for x in tj.get("forward") or [] if "compile_s" in x]
    if comp:
        a("* compile_f16 compile time (first call): " +
          ", ".join(f"b{x['batch']} {x['compile_s']:.0f} s" for x in comp))
    a("")

    if res.get("encoder_ms") or res.get("decoder_ms"):
        a("### Ours: encoder / decoder (ms)")
        a("")
        eb = sorted({int(b) for d in list(res["encoder_ms"].values()) + list(res["decoder_ms"].values()) for b in d})
        a("| precision | " + " | ".join(f"enc b{b} | dec b{b}" for b in eb) + " |")
        a("|---|" + "---:|" * (2 * len(eb)) + "")
        for n in sorted(set(res["encoder_ms"]) | set(res["decoder_ms"])):
            cells = []
            for b in eb:
                cells += [fmt(res["encoder_ms"].get(n, {}).get(str(b))), fmt(res["decoder_ms"].get(n, {}).get(str(b)))]
            a(f"| {n} | " + " | ".join(cells) + " |")
        a("")

    a("### Whole pair (s; both inversions + generation, batch 1)")
    a("")
    a("| preset | series | s | PSNR of the image vs ours (dB, uint8) |")
    a("|---|---|---:|---|")
    for preset, d in res["pair_s_all"].items():
        for n in sorted(d, key=lambda k: (not k.startswith("ours"), k)):
            pv = (res["psnr_vs_baseline"]["pair"].get(preset) or {}).get(n)
            pstr = ", ".join(f"{p} {fmt(v, 1)}" for p, v in pv.items()) if pv else ""
            a(f"| {preset} | {n} | {fmt(d[n])} | {pstr} |")
    a("")
    a(f"pair_s.ours = ours_{res.get('pair_s_ours_precision')} (our fastest in-domain precision).")
    a("")
    if res["pairs_per_s"]:
        a("### Throughput (pairs per second, pairs packed in one batch)")
        a("")
        a("| series | preset / batch | pairs/s |")
        a("|---|---|---:|")
        for n, d in res["pairs_per_s"].items():
            for k, v in d.items():
                a(f"| {n} | {k} | {fmt(v)} |")
        a("")
    a("### Speedups (their ms / our ms)")
    a("")
    sp = res["speedups"]
    a("| batch | ours_bf16 vs eager_f32 | vs eager_f16 | vs compile_f16 |")
    a("|---|---:|---:|---:|")
    for b, d in sp["by_batch"].items():
        a(f"| {b} | {fmt(d['ours_bf16_vs_eager_f32'], 2, 'x')} | {fmt(d['ours_bf16_vs_eager_f16'], 2, 'x')} | "
          f"{fmt(d['ours_bf16_vs_compile_f16'], 2, 'x')} |")
    a(f"| pair in-domain, ours vs eager_f32 | {fmt(sp['pair_in-domain_ours_vs_eager_f32'], 2, 'x')} | | |")
    a("")
    a("### Targets")
    a("")
    a("| target | measured | met | detail |")
    a("|---|---:|---|---|")
    for k, v in res["targets"].items():
        m = {True: "yes", False: "**no**", None: "n/a"}[v["met"]]
        a(f"| {v['target']} | {fmt(v['value'])} | {m} | {v.get('detail', '')} |")
    a("")
    a("PSNR: 10 log10(peak^2 / mse), peak = max - min of our tensor (our eps of that precision) "
      "for the forward; 255 for the uint8 pair images.")
    a("")
    profile_md(res, a)
    return "\n".join(L)


def profile_md(res, a):
    """Where our forward's time goes (`diffstyle bench --profile`): per op kind, and the
    largest rows per op kind and resolution, with the ceilings for reference."""
    c = res.get("ceilings") or {}
    for p in res.get("profile") or []:
        a(f"### Where the time goes: ours, {p['precision']}, batch 1 (each op timed on its own)")
        a("")
        a(f"Sum of the ops' own times {fmt(p.get('ops_ms'))} ms per forward (direct launches, one "
          f"synchronisation each: more than a graph-replayed forward by the launch gaps). Ceilings: "
          f"{fmt(c.get('bf16_matmul_tflops'), 1)} TFLOP/s (bf16 matmul), {fmt(c.get('copy_tb_s'), 2)} TB/s (copy). "
          "MB = the fewest bytes the op must move (inputs read once, output written once, weights once).")
        a("")
        a("| op | calls | ms | % | TFLOP/s | GB/s |")
        a("|---|---:|---:|---:|---:|---:|")
        rows = p.get("by_kind", []) + [None] + p.get("by_op", [])[:12]
        for row in rows:
            if row is None:
                a("| *largest by resolution* | | | | | |")
                continue
            a(f"| {row['op']} | {row['calls']} | {fmt(row['ms'])} | {fmt(100 * row['share'], 1)} | "
              f"{fmt(row['tflops'], 2)} | {fmt(row['gb_s'], 0)} |")
        a("")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ours_dir")
    ap.add_argument("torch_json")
    ap.add_argument("--commit", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--command", action="append", default=[], help="a command that made the numbers (repeatable)")
    ap.add_argument("--results", default="benches/results.json")
    ap.add_argument("--markdown", help="write the BENCHMARKS.md section here")
    a = ap.parse_args()
    ours, tj = load(a.ours_dir, a.torch_json)
    res = build(ours, tj, a.commit, a.date, a.command)
    old = {}
    if os.path.isfile(a.results):
        with open(a.results) as f:
            old = json.load(f)
    old.update(res)
    old = finite(old)
    os.makedirs(os.path.dirname(os.path.abspath(a.results)), exist_ok=True)
    tmp = a.results + ".tmp"
    with open(tmp, "w") as f:
        json.dump(old, f, indent=1, allow_nan=False, default=str)
        f.write("\n")
    os.replace(tmp, a.results)
    print(f"wrote {a.results}", file=sys.stderr)
    md = markdown(res, tj)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(md)
        print(f"wrote {a.markdown}", file=sys.stderr)
    else:
        print(md)


if __name__ == "__main__":
    main()
