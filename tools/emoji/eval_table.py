#!/usr/bin/env python3
"""The table of EVALUATION.md from the folders tools/emoji/evaluate.sh writes: one row
per (model, swept value), from each value's `diffstyle evaluate --truth --out` JSON.

    python3 tools/emoji/eval_table.py target/emoji/eval > summary.md   # also summary.json

Standard library only.
"""
import glob
import json
import os
import sys


def rows(root, model):
    out = []
    for f in sorted(glob.glob(os.path.join(root, "sweep-*", "*", "truth.json"))):
        with open(f) as fh:
            d = json.load(fh)
        s, t = d["summary"], d["truth_summary"]
        out.append({
            "model": model,
            "run": os.path.basename(os.path.dirname(f)),
            "pairs": s["pairs"],
            "colour_from_style": s["colour_from_style"],
            "edges_from_content": s["edges_from_content"],
            "both": s["both"],
            "truth_colour_closer": t["colour_closer"],
            "truth_edges_closer": t["edges_closer"],
            "truth_psnr_higher": t["psnr_higher"],
            "psnr_output_db": t["mean_psnr_output_db"],
            "psnr_content_db": t["mean_psnr_content_db"],
            "colour_gain": t["mean_colour_gain"],
            "edges_gain": t["mean_edges_gain"],
        })
    return out


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "target/emoji/eval"
    all_rows = (rows(root, "trained") + rows(os.path.join(root, "control"), "control (untrained fixture)")
                + rows(os.path.join(root, "ceiling"), "reference (as the output)"))
    with open(os.path.join(root, "summary.json"), "w") as f:
        json.dump(all_rows, f, indent=1)
        f.write("\n")
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    print("| model | run | pairs | colours from style % | edges from content % | both % "
          "| truth: colour closer % | truth: edges closer % | truth: PSNR higher % "
          "| PSNR to truth, output / content (dB) | colour gain | edge gain |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in all_rows:
        print(f"| {r['model']} | `{r['run']}` | {r['pairs']} | {pct(r['colour_from_style'])} "
              f"| {pct(r['edges_from_content'])} | {pct(r['both'])} | {pct(r['truth_colour_closer'])} "
              f"| {pct(r['truth_edges_closer'])} | {pct(r['truth_psnr_higher'])} "
              f"| {r['psnr_output_db']:.2f} / {r['psnr_content_db']:.2f} | {r['colour_gain']:+.4f} "
              f"| {r['edges_gain']:+.4f} |")


if __name__ == "__main__":
    main()
