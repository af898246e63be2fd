#!/usr/bin/env python3
"""Turns tools/bench_cpu.sh's raw outputs (RAW/*.txt, RAW/pairs/ours.json) into
OUT/bench_cpu.json, OUT/bench_cpu.md and OUT/bench_cpu.png (a bar chart of ms per
forward and per conv, ours against PyTorch, f32 and bf16).

Usage: python3 tools/bench_cpu_report.py RAW OUT
"""

import datetime
import json
import os
import platform
import subprocess
import sys


def json_lines(path):
    out = []
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def cpu_flags():
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            keep = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16"]
            return [f for f in keep if f in flags]
    return []


def span(path):
    if not os.path.exists(path):
        return None
    v = [float(x) for x in open(path).read().split()]
    return {"min": min(v), "max": max(v), "mean": round(sum(v) / len(v), 2), "samples": len(v)} if v else None


def main():
    raw, out = sys.argv[1], sys.argv[2]
    ours = {p: {r["model"]: r for r in json_lines(os.path.join(raw, f"ours_{p}.txt"))} for p in ("f32", "bf16")}
    torch_rows = json_lines(os.path.join(raw, "torch.txt"))
    torch = {m: {r["model"]: r for r in torch_rows if r.get("mode") == m and "model" in r} for m in ("f32", "bf16")}
    ceilings = {r["ceiling"]: r["gflops"] for r in torch_rows if "ceiling" in r}
    pairs = {}
    pj = os.path.join(raw, "pairs", "ours.json")
    if os.path.exists(pj):
        pairs = json.load(open(pj))
    device = open(os.path.join(raw, "device.txt")).read().strip() if os.path.exists(os.path.join(raw, "device.txt")) else "?"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    torch_version = next((r.get("torch_version") for r in torch_rows if r.get("torch_version")), "?")

    models = [m for m in ("tiny", "ddpm256", "conv3x3") if m in ours["f32"] or m in torch["f32"]]
    rows = []
    for m in models:
        row = {"model": m}
        for p in ("f32", "bf16"):
            o, t = ours[p].get(m), torch[p].get(m)
            row[f"ours_{p}_ms"] = o["ours_ms_median"] if o else None
            row[f"torch_{p}_ms"] = t["torch_ms_median"] if t else None
            row[f"speedup_{p}"] = (
                round(t["torch_ms_median"] / o["ours_ms_median"], 3) if o and t and o["ours_ms_median"] > 0 else None
            )
            row[f"ours_{p}_gflops"] = round(o["gflops"], 1) if o else None
            row[f"backend_{p}"] = o.get("backend") if o else None
        rows.append(row)

    # Seconds per pair (the second of two runs), by preset and precision.
    pair_s = {f"{r['preset']} {r['precision']}": round(r["s"], 3) for r in pairs.get("pair", [])}
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "device": device,
        "torch_version": torch_version,
        "rows": rows,
        "torch_mm_ceiling_gflops": ceilings,
        "pairs": pair_s,
        "load_1min": {n: span(os.path.join(raw, f"load_{n}.txt")) for n in ("ours_f32", "ours_bf16", "torch", "pairs")},
        "targets": {
            "bf16_vs_torch_bf16_on_amx": 1.5,
            "f32_vs_torch_f32_on_avx512": 1.3,
            "f32_vs_torch_f32_on_avx2": 1.3,
        },
    }
    with open(os.path.join(out, "bench_cpu.json"), "w") as f:
        json.dump(result, f, indent=1)

    def ms(v):
        return f"{v:.2f}" if v is not None else "n/a"

    def x(v):
        return f"{v:.2f}x" if v is not None else "n/a"

    lines = [
        f"{result['date']}, commit {commit}, {result['cpu']} ({result['cores']} cores; "
        f"{', '.join(result['cpu_flags'])}), PyTorch {torch_version}",
        f"ours: {device}",
        "",
        "| model | ours f32 ms | torch f32 ms | f32: torch / ours | ours bf16 ms | torch bf16 CL ms | bf16: torch / ours |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {ms(r['ours_f32_ms'])} | {ms(r['torch_f32_ms'])} | {x(r['speedup_f32'])} | "
            f"{ms(r['ours_bf16_ms'])} | {ms(r['torch_bf16_ms'])} | {x(r['speedup_bf16'])} |"
        )
    lines.append("")
    lines.append("torch / ours > 1: ours is faster. " + (
        "torch.mm 2048^3 ceiling: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in ceilings.items()) if ceilings else ""
    ))
    for r in rows:
        if r["ours_f32_gflops"] is not None:
            lines.append(
                f"ours {r['model']}: {r['ours_f32_gflops']} GFLOP/s f32, {r['ours_bf16_gflops']} GFLOP/s bf16"
            )
    if pair_s:
        lines.append("pair on the tiny model, seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in pair_s.items()))
    lines.append(
        "1-min load during the phases: "
        + "; ".join(f"{k} {v['min']:.2f}..{v['max']:.2f}" for k, v in result["load_1min"].items() if v)
    )
    md = "\n".join(lines) + "\n"
    with open(os.path.join(out, "bench_cpu.md"), "w") as f:
        f.write(md)
    print(md)
    chart(rows, os.path.join(out, "bench_cpu.png"), lines[0])


def chart(rows, path, title):
    """Bars of torch / ours per model and precision (1 = parity), from the JSON rows."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        print("no pillow: chart skipped", file=sys.stderr)
        return
    series = [(r["model"], p, r[f"speedup_{p}"]) for r in rows for p in ("f32", "bf16") if r[f"speedup_{p}"]]
    if not series:
        return
    w, h, left, bottom, top = 900, 420, 70, 70, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    vmax = max(2.0, max(s for _, _, s in series) * 1.1)
    scale = (h - bottom - top) / vmax
    d.text((10, 10), "PyTorch time / ours (higher: ours faster)  " + title[:90], fill="black")
    y1 = h - bottom - scale * 1.0
    d.line([(left, y1), (w - 10, y1)], fill="gray")
    d.text((10, y1 - 6), "1.0x", fill="gray")
    bw = (w - left - 20) / len(series)
    for i, (m, p, s) in enumerate(series):
        x0 = left + i * bw + 6
        y0 = h - bottom - scale * s
        d.rectangle([x0, y0, x0 + bw - 12, h - bottom], fill=(70, 110, 200) if p == "f32" else (220, 120, 50))
        d.text((x0, y0 - 14), f"{s:.2f}x", fill="black")
        d.text((x0, h - bottom + 6), m, fill="black")
        d.text((x0, h - bottom + 20), p, fill="black")
    img.save(path)


if __name__ == "__main__":
    main()
