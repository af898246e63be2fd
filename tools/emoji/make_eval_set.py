#!/usr/bin/env python3
"""Writes the fixed evaluation sample of the emoji model (EVALUATION.md) and the
README's example pair from target/emoji/heldout.npz (tools/emoji/build_dataset.sh):

    python3 tools/emoji/make_eval_set.py [--heldout target/emoji/heldout.npz] [--out examples/emoji]

Pairs: 20 content images x 10 style images = 200 pairs, all of held-out emoji (never
seen in training). Contents are rendered in the full-colour styles (noto, twemoji,
fluent-color, in turn), styles in the others (openmoji, openmoji-black, fluent-flat,
fluent-hc, in turn), so a content and its style never share a rendering. The known
answer of pair (content emoji A in rendering X, style emoji B in rendering Y) is A in
rendering Y: truth.tsv lists it for every pair, in the format of `diffstyle evaluate
--truth`. Emoji are taken at a fixed stride through the held-out list (contents from
index 0, styles from index 1, every 4th and 8th), so the choice is no one's pick.

Writes under --out: content/*.png, style/*.png, truth/*.png (64 px, as rendered),
contents.txt, styles.txt (one path per line, relative to the repository), truth.tsv,
and LIST.md (which emoji and renderings, with names).
"""
import argparse
import os

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTENT_STYLES = ["noto", "twemoji", "fluent-color"]
STYLE_STYLES = ["openmoji", "openmoji-black", "fluent-flat", "fluent-hc"]
N_CONTENT, N_STYLE = 20, 10


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heldout", default=os.path.join(ROOT, "target/emoji/heldout.npz"))
    ap.add_argument("--out", default=os.path.join(ROOT, "examples/emoji"))
    a = ap.parse_args()
    z = np.load(a.heldout)
    styles = [str(s) for s in z["styles"]]
    keys, names = z["keys"], z["names"]
    index = {(int(e), styles[int(s)]): i for i, (e, s) in enumerate(zip(z["emoji"], z["style"]))}
    emoji = sorted({int(e) for e in z["emoji"]})
    contents = [(emoji[(4 * i) % len(emoji)], CONTENT_STYLES[i % 3]) for i in range(N_CONTENT)]
    style_list = [(emoji[(8 * j + 1) % len(emoji)], STYLE_STYLES[j % 4]) for j in range(N_STYLE)]
    assert len({e for e, _ in contents}) == N_CONTENT and len({e for e, _ in style_list}) == N_STYLE

    def name(e, s):
        return f"{str(keys[e]).lower()}_{s}"

    def save(sub, e, s):
        d = os.path.join(a.out, sub)
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, name(e, s) + ".png")
        Image.fromarray(z["images"][index[(e, s)]]).save(p, optimize=True)
        return os.path.relpath(p, ROOT)

    cpaths = [save("content", e, s) for e, s in contents]
    spaths = [save("style", e, s) for e, s in style_list]
    lines = ["# content\tstyle\ttruth (relative to this file): the content's emoji in the style's rendering"]
    for (ce, _), cp in zip(contents, cpaths):
        for (_, ss), sp in zip(style_list, spaths):
            t = save("truth", ce, ss)
            lines.append(f"{cp}\t{sp}\t{os.path.relpath(os.path.join(ROOT, t), a.out)}")
    with open(os.path.join(a.out, "contents.txt"), "w") as f:
        f.write("\n".join(cpaths) + "\n")
    with open(os.path.join(a.out, "styles.txt"), "w") as f:
        f.write("\n".join(spaths) + "\n")
    with open(os.path.join(a.out, "truth.tsv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(a.out, "LIST.md"), "w") as f:
        f.write("# The emoji evaluation sample\n\nWritten by `tools/emoji/make_eval_set.py` from the "
                "held-out emoji of `tools/emoji/build_dataset.sh` (none was seen in training). "
                "Images: see DATA_LICENSES (OpenMoji renderings and transfers involving them are "
                "CC BY-SA 4.0).\n\n| | file | emoji |\n|---|---|---|\n")
        for (e, s), p in zip(contents, cpaths):
            f.write(f"| content | `{os.path.basename(p)}` | {names[e]} ({s}) |\n")
        for (e, s), p in zip(style_list, spaths):
            f.write(f"| style | `{os.path.basename(p)}` | {names[e]} ({s}) |\n")
    print(f"{len(cpaths)} contents, {len(spaths)} styles, {len(lines) - 1} pairs -> {a.out}")


if __name__ == "__main__":
    main()
