#!/usr/bin/env python3
"""Builds the emoji style dataset: the same emoji in several renderings ("styles").

    tools/emoji/build_dataset.sh                 # = python3 tools/emoji/build_dataset.py
    python3 tools/emoji/build_dataset.py --styles noto,twemoji,openmoji,fluent-color

Steps (all outputs under target/emoji/ unless --out is given; nothing goes into git except
DATA_LICENSES at the repo root):

1. `npm pack` the pinned packages (PACKAGES below) into target/emoji/npm/, check each
   tarball against its pinned sha512 integrity, unpack into target/emoji/pkg/.
2. Index every style by a normalised codepoint key: upper-case hex codepoints joined by
   '-', with every U+FE0F (variation selector 16) removed, so "0023-FE0F-20E3" and
   "0023-20E3" are the same emoji. emoji-datasource: `unified` of the top-level entries
   of emoji.json (skin-tone variations live in `skin_variations` and are not used).
   OpenMoji: `hexcode` of data/openmoji.json, entries without a skin tone, the Unicode
   groups only (not the OpenMoji extras). Fluent (files named after the CLDR short name,
   no codepoints in the package): the file stem is matched against the slug of OpenMoji's
   `annotation` (the CLDR name); `-default` is the base of a skin-tone set (the other
   tones are left out); ALIASES covers the names Fluent spells differently.
3. Keep the emoji present in every chosen style (the intersection), sorted by codepoints.
   Held out for evaluation: every 20th emoji of that sorted list, starting at index 10
   (i % 20 == 10), in every style.
4. Render each (emoji, style) to 64x64 RGB on white: SVGs are rasterised by resvg
   (resvg-py) at 4x (256 px; OpenMoji's 72-unit canvas is rendered at 288 px and
   cropped to its central 64 units, 4..68, where its artwork lies), composited on white
   and reduced to 64 px with a Lanczos filter. emoji-datasource ships 64 px PNGs, which
   are composited on white as they are.
5. Write train.npz (training emoji) and heldout.npz (held-out emoji), each with
   images uint8 [N, 64, 64, 3], style uint8 [N] (index into `styles`), emoji uint16 [N]
   (index into `keys`), styles, keys, names (CLDR names); stats.json; contact sheets
   (contact_heldout.png: rows = styles, columns = held-out emoji; contact_train.png:
   a fixed spread of training emoji; contact_least_alike.png: the 24 emoji whose first
   style and first Fluent style look least alike, where a name-matching mistake would
   show); and DATA_LICENSES at the repo root.

Deterministic: the npz files are zip archives written with fixed member timestamps, so a
rerun with the same package versions, resvg, Pillow, numpy and zlib gives the same bytes
(stats.json records sha256 of every output so that can be checked).
"""
import argparse
import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import unicodedata
import zipfile

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = 64

# name, version, npm sha512 integrity (from `npm view <name>@<version> dist.integrity`).
PACKAGES = {
    "emoji-datasource-google": ("16.0.0", "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A=="),
    "emoji-datasource-twitter": ("16.0.0", "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ=="),
    "openmoji": ("17.0.0", "sha512-EBnYrNGdcdw+OSXmENeNE1yBNRu6tOraTmoOyUbJkTmvT/+XETp8RZLSJFzD3lrPc5N9CzsyPnRTk0Vp4UaI9w=="),
    "fluentui-emoji": ("1.3.0", "sha512-JTXXwqIie2rWTgOkIJDJxr0WtwTz2WU4kdOq8buLVThYwQ264aFR2jdTyuon2oEbLqqGMT64zI4btyn1saB2xw=="),
}

# style name -> (package, how to find its images)
STYLES = {
    "noto": ("emoji-datasource-google", "img/google/64"),
    "twemoji": ("emoji-datasource-twitter", "img/twitter/64"),
    "openmoji": ("openmoji", "color/svg"),
    "openmoji-black": ("openmoji", "black/svg"),
    "fluent-color": ("fluentui-emoji", "icons/modern"),
    "fluent-flat": ("fluentui-emoji", "icons/flat"),
    "fluent-hc": ("fluentui-emoji", "icons/high-contrast"),
}
DEFAULT_STYLES = "noto,twemoji,openmoji,openmoji-black,fluent-color,fluent-flat,fluent-hc"

# Fluent file stems (after dropping "-default" / "-flat") that are not the slug of the
# current CLDR name: stem -> CLDR name, or "#" + codepoint key where the CLDR name has
# no letters to slug ("keycap: *").
ALIASES = {
    "blackbird": "black bird",
    "hugging-face": "smiling face with open hands",
    "keycap-asterisk": "#002A-20E3",
    "keycap-hashtag": "#0023-20E3",
    "knocked-out-face": "face with crossed-out eyes",
    "man-blonde-hair": "man: blond hair",
    "woman-blonde-hair": "woman: blond hair",
    "person-blonde-hair": "person: blond hair",
    "man-deaf": "deaf man",
    "woman-deaf": "deaf woman",
    "person-deaf": "deaf person",
    "man-merpeople": "merman",
    "woman-merpeople": "mermaid",
    "person-merpeople": "merperson",
    "man-with-bunny-ears": "men with bunny ears",
    "woman-with-bunny-ears": "women with bunny ears",
    "person-with-bunny-ears": "people with bunny ears",
    "man-wrestling": "men wrestling",
    "woman-wrestling": "women wrestling",
    "person-wrestling": "people wrestling",
    "person-elf": "elf",
    "person-fairy": "fairy",
    "person-genie": "genie",
    "person-mage": "mage",
    "person-superhero": "superhero",
    "person-supervillain": "supervillain",
    "person-vampire": "vampire",
    "person-zombie": "zombie",
    "phoenix-bird": "phoenix",
    "pinata": "piñata",
    "pouting-face": "enraged face",
    "red-triangle": "red triangle pointed up",
    "stuffedbread": "stuffed flatbread",
}
TONES = ("-light", "-medium-light", "-medium", "-medium-dark", "-dark")

HELDOUT_EVERY, HELDOUT_OFFSET = 20, 10


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def key_of(hexcodes: str) -> str:
    cps = [c.upper() for c in re.split(r"[-_ ]", hexcodes.strip()) if c]
    return "-".join(c.zfill(4) for c in cps if c != "FE0F")


def sort_key(k: str):
    return tuple(int(c, 16) for c in k.split("-"))


def slug(name: str) -> str:
    s = unicodedata.normalize("NFKD", name)
    s = "".join(ch for ch in s if not unicodedata.combining(ch))
    s = s.lower().replace("\u2019", "").replace("'", "")
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-")


# ---------------------------------------------------------------- packages

def sri_sha512(path: str) -> str:
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha512-" + base64.b64encode(h.digest()).decode()


def fetch(cache: str) -> dict:
    """npm-packs and unpacks every pinned package; returns name -> unpacked package dir."""
    npm_dir, pkg_dir = os.path.join(cache, "npm"), os.path.join(cache, "pkg")
    os.makedirs(npm_dir, exist_ok=True)
    dirs = {}
    for name, (ver, integrity) in PACKAGES.items():
        tgz = os.path.join(npm_dir, f"{name}-{ver}.tgz")
        if not os.path.exists(tgz):
            log(f"npm pack {name}@{ver}")
            subprocess.run(["npm", "pack", f"{name}@{ver}", "--silent", "--pack-destination",
                            npm_dir], check=True, stdout=subprocess.DEVNULL)
        got = sri_sha512(tgz)
        if got != integrity:
            sys.exit(f"{tgz}: integrity {got} != pinned {integrity}")
        dest = os.path.join(pkg_dir, f"{name}-{ver}")
        if not os.path.exists(os.path.join(dest, ".unpacked")):
            log(f"unpack {tgz}")
            os.makedirs(dest, exist_ok=True)
            with tarfile.open(tgz) as tf:
                tf.extractall(dest, filter="data")
            open(os.path.join(dest, ".unpacked"), "w").close()
        dirs[name] = os.path.join(dest, "package")
    return dirs


# ---------------------------------------------------------------- indexes

def openmoji_names(dirs: dict) -> dict:
    """key -> CLDR name, for OpenMoji's Unicode emoji without skin tones."""
    om = json.load(open(os.path.join(dirs["openmoji"], "data", "openmoji.json"), encoding="utf-8"))
    out = {}
    for e in om:
        if e["skintone"] != "" or e["group"].startswith("extras"):
            continue
        out.setdefault(key_of(e["hexcode"]), e["annotation"])
    return out


def index_style(style: str, dirs: dict, names: dict) -> tuple:
    """Returns ({key: image path}, notes) for a style."""
    pkg, sub = STYLES[style]
    base = os.path.join(dirs[pkg], sub)
    notes = {}
    out = {}
    if pkg.startswith("emoji-datasource"):
        flag = "has_img_" + sub.split("/")[1]
        data = json.load(open(os.path.join(dirs[pkg], "emoji.json"), encoding="utf-8"))
        for e in data:
            if not e.get(flag):
                continue
            p = os.path.join(base, e["image"])
            if os.path.exists(p):
                out.setdefault(key_of(e["unified"]), p)
    elif pkg == "openmoji":
        files = set(os.listdir(base))
        om = json.load(open(os.path.join(dirs[pkg], "data", "openmoji.json"), encoding="utf-8"))
        for e in om:
            if e["skintone"] != "" or e["group"].startswith("extras"):
                continue
            f = e["hexcode"] + ".svg"
            if f in files:
                out.setdefault(key_of(e["hexcode"]), os.path.join(base, f))
    else:  # Fluent: match file names to CLDR names
        by_slug = {}
        for k in sorted(names, key=sort_key):
            by_slug.setdefault(slug(names[k]), k)
        unmatched, tones, dup = [], 0, 0
        for f in sorted(os.listdir(base)):
            if not f.endswith(".svg"):
                continue
            stem = f[:-4]
            if stem.endswith("-flat"):
                stem = stem[:-5]
            if stem.endswith("-default"):
                stem = stem[:-8]
            elif stem.endswith(TONES) and os.path.exists(
                    os.path.join(base, re.sub(r"(-medium)?-(light|dark)$|-medium$", "", stem)
                                 + "-default.svg")):
                tones += 1
                continue
            alias = ALIASES.get(stem)
            if alias and alias.startswith("#"):
                k = alias[1:]
            else:
                k = by_slug.get(slug(alias) if alias else stem)
            if k is None:
                unmatched.append(f)
                continue
            if k in out:
                dup += 1
                continue
            out[k] = os.path.join(base, f)
        notes = {"files": len([f for f in os.listdir(base) if f.endswith(".svg")]),
                 "skin_tone_files_left_out": tones, "duplicates": dup,
                 "unmatched": unmatched}
    return out, notes


# ---------------------------------------------------------------- rendering

def on_white(im: Image.Image) -> Image.Image:
    im = im.convert("RGBA")
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
    return Image.alpha_composite(bg, im).convert("RGB")


def render(path: str, style: str) -> np.ndarray:
    if path.endswith(".png"):
        im = Image.open(path)
        im.load()
        im = on_white(im)
        if im.size != (SIZE, SIZE):
            im = im.resize((SIZE, SIZE), Image.LANCZOS)
        return np.asarray(im, dtype=np.uint8)
    import resvg_py
    hi = SIZE * 4
    if style.startswith("openmoji"):   # 72-unit canvas, artwork within 4..68
        full = hi * 72 // 64
        png = resvg_py.svg_to_bytes(svg_path=path, width=full, height=full)
        im = Image.open(io.BytesIO(bytes(png)))
        o = (full - hi) // 2
        im = im.crop((o, o, o + hi, o + hi))
    else:
        png = resvg_py.svg_to_bytes(svg_path=path, width=hi, height=hi)
        im = Image.open(io.BytesIO(bytes(png)))
    im = on_white(im).resize((SIZE, SIZE), Image.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


# ---------------------------------------------------------------- output

def save_npz(path: str, arrays: dict):
    """An .npz (np.load reads it) with LZMA-compressed members (27% smaller than
    np.savez_compressed's deflate here) and fixed member timestamps (byte-identical reruns)."""
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_LZMA) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_LZMA
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    os.replace(tmp, path)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def contact_sheet(path: str, imgs: dict, keys: list, styles: list):
    """Rows = styles, columns = keys; 4 px white gaps on grey."""
    g = 4
    w, h = len(keys) * (SIZE + g) + g, len(styles) * (SIZE + g) + g
    sheet = Image.new("RGB", (w, h), (128, 128, 128))
    for r, s in enumerate(styles):
        for c, k in enumerate(keys):
            sheet.paste(Image.fromarray(imgs[(k, s)]), (g + c * (SIZE + g), g + r * (SIZE + g)))
    sheet.save(path, optimize=False)


def least_alike(imgs: dict, keys: list, a: str, b: str, n: int = 24) -> list:
    """The n emoji whose renderings in styles a and b correlate least (16x16 grey):
    where a matching mistake would show first."""
    def feat(s):
        g = np.stack([imgs[(k, s)] for k in keys]).astype(np.float32).mean(-1)
        g = g.reshape(len(keys), 16, 4, 16, 4).mean((2, 4)).reshape(len(keys), -1)
        g -= g.mean(1, keepdims=True)
        return g / (np.linalg.norm(g, axis=1, keepdims=True) + 1e-6)
    corr = (feat(a) * feat(b)).sum(1)
    return [keys[i] for i in np.argsort(corr, kind="stable")[:n]]


# ---------------------------------------------------------------- licences

def licences_text(dirs: dict, styles: list, stats: dict) -> str:
    used = sorted({STYLES[s][0] for s in styles})
    n_emoji = stats["intersection"]
    lines = [
        "# DATA_LICENSES",
        "",
        "Licences and attributions of the data the emoji model is trained on. The data",
        "itself is not in this repository: `tools/emoji/build_dataset.sh` downloads the",
        "pinned npm packages below and renders them (see tools/README.md). Written by that",
        "script; do not edit by hand.",
        "",
        f"Styles used: {', '.join(styles)}.",
        f"Emoji present in every style: {n_emoji} ({stats['train_emoji']} for training, "
        f"{stats['heldout_emoji']} held out);",
        f"images: {stats['train_images']} training, {stats['heldout_images']} held out.",
        "",
        "Modifications made to every image: rasterised (SVGs, by resvg, at 256 px) or",
        "decoded (the 64 px PNGs), composited on a white background, cropped (OpenMoji:",
        "the central 64 of its 72 units) and reduced to 64x64 RGB.",
        "",
    ]
    sections = {
        "emoji-datasource-google": [
            "## Noto Color Emoji images (npm `emoji-datasource-google`)",
            "",
            "- Package: emoji-datasource-google {ver} (https://github.com/iamcal/emoji-data),",
            "  64 px PNGs from Noto Emoji v2.048 (https://github.com/googlefonts/noto-emoji).",
            "- Package licence (its LICENSE file): MIT, \"Copyright (c) 2013 Cal Henderson\"",
            "  (covers the package's data and code).",
            "- Image licence: the package README states \"Android/Google/Noto images, are",
            "  available under the Apache License 2.0\" (link:",
            "  https://github.com/googlei18n/noto-emoji/blob/master/LICENSE); the README of",
            "  the noto-emoji repository: \"Emoji fonts (under the fonts subdirectory) are under",
            "  the SIL Open Font License, version 1.1. Tools and most image resources are under",
            "  the Apache license, version 2.0. Flag images under third_party/region-flags are",
            "  in the public domain\". The images used here are image resources (Apache-2.0);",
            "  no country flag is in the intersection (Fluent has none). The OFL applies to",
            "  the font files, which are not used.",
            "- Attribution / conditions (Apache-2.0 section 4): give recipients a copy of the",
            "  licence (https://www.apache.org/licenses/LICENSE-2.0), state the changes",
            "  (above), keep copyright notices: \"Noto Emoji, Copyright Google Inc., Apache",
            "  License 2.0\". No share-alike term.",
        ],
        "emoji-datasource-twitter": [
            "## Twemoji images (npm `emoji-datasource-twitter`)",
            "",
            "- Package: emoji-datasource-twitter {ver} (https://github.com/iamcal/emoji-data),",
            "  64 px PNGs from the maintained Twemoji fork v16.0.1 (https://github.com/jdecked/twemoji).",
            "- Package licence (its LICENSE file): MIT, \"Copyright (c) 2013 Cal Henderson\".",
            "- Image licence: the package README states \"Twitter images are available under the",
            "  Creative Commons Attribution 4.0 license\" (link:",
            "  https://github.com/jdecked/twemoji/blob/v15.0.2/LICENSE-GRAPHICS). CC BY 4.0:",
            "  https://creativecommons.org/licenses/by/4.0/. LICENSE-GRAPHICS itself is not in",
            "  the npm package and was not read for this file: check its exact copyright line",
            "  before publishing.",
            "- Attribution (CC BY 4.0 section 3(a)): \"Twemoji graphics, Copyright Twitter, Inc",
            "  and other contributors (and jdecked and other contributors for the fork),",
            "  licensed under CC BY 4.0, https://creativecommons.org/licenses/by/4.0/;",
            "  modified (rendered, composited, resized)\". No share-alike term.",
        ],
        "openmoji": [
            "## OpenMoji (npm `openmoji`)",
            "",
            "- Package: openmoji {ver} (https://openmoji.org/,",
            "  https://github.com/hfg-gmuend/openmoji), `color/svg` (and `black/svg` for the",
            "  openmoji-black style).",
            "- Licence (LICENSE.txt and README): \"OpenMoji graphics are licensed under the",
            "  Creative Commons Share Alike License 4.0 (CC BY-SA 4.0)\"; the package's code is",
            "  LGPL-3.0 (not used). LICENSE.txt is the full CC BY-SA 4.0 legal code.",
            "- Attribution the project asks for (README, \"Attribution Requirements\"):",
            "  \"All emojis designed by OpenMoji – the open-source emoji and icon project.",
            "  License: CC BY-SA 4.0\" (links: https://openmoji.org/,",
            "  https://creativecommons.org/licenses/by-sa/4.0/). Academic citation:",
            "  Groß, B., Utz, D., & The OpenMoji Contributors, OpenMoji [Dataset],",
            "  https://openmoji.org. Per-emoji authors are listed in data/openmoji.json",
            "  (`openmoji_author`).",
            "- CC BY-SA 4.0 section 3(a) (attribution, indicate modifications, link the",
            "  licence) applies to anything shared that contains OpenMoji images, e.g. this",
            "  dataset if it is ever redistributed, and to example images rendered from",
            "  OpenMoji inputs.",
            "- **Share-alike (section 3(b))**: \"if You Share Adapted Material You produce, ...",
            "  The Adapter's License You apply must be a Creative Commons license with the same",
            "  License Elements, this version or later, or a BY-SA Compatible License.\"",
            "  Consequences here: (1) example images under `examples/` that show an OpenMoji",
            "  emoji, or a style transfer to or from one, are adapted material: ship them",
            "  under CC BY-SA 4.0 with the attribution above. (2) Whether model weights",
            "  trained on OpenMoji are \"Adapted Material\" is legally unsettled; the",
            "  conservative reading is that they are, so the trained weights should be",
            "  released under CC BY-SA 4.0 (not the repository's code licence) with this",
            "  attribution, and samples from the model treated the same way. A model that must",
            "  be free of share-alike terms has to be trained without the openmoji styles",
            "  (`--styles` without openmoji*).",
        ],
        "fluentui-emoji": [
            "## Microsoft Fluent Emoji (npm `fluentui-emoji`)",
            "",
            "- Package: fluentui-emoji {ver} (https://github.com/MKAbuMattar/fluentui-emoji),",
            "  a repackaging of Microsoft's Fluent Emoji (https://github.com/microsoft/fluentui-emoji)",
            "  SVGs: `icons/modern` (the Color style), `icons/flat`, `icons/high-contrast`.",
            "  The 3D style (PNG) is not in this package and not used.",
            "- Licence (the package's LICENSE file): MIT, \"Copyright (c) 2022 Mohammad Abu",
            "  Mattar\": \"The above copyright notice and this permission notice shall be",
            "  included in all copies or substantial portions of the Software.\" The upstream",
            "  artwork is published by Microsoft under the MIT licence",
            "  (https://github.com/microsoft/fluentui-emoji/blob/main/LICENSE, \"Copyright (c)",
            "  Microsoft Corporation\"); that file is not in the npm package and was not read",
            "  for this file: check it before publishing.",
            "- Attribution: \"Fluent Emoji, Copyright (c) Microsoft Corporation; packaged by",
            "  Mohammad Abu Mattar; MIT License\" with the MIT permission notice. No",
            "  share-alike term.",
        ],
    }
    for name in used:
        ver = PACKAGES[name][0]
        lines += [ln.replace("{ver}", ver) for ln in sections[name]] + [""]
    lines += [
        "## What this means for the shipped weights and the bundled images",
        "",
        "The trained model in `models/` (`models/emoji-32/`, and the training state",
        "`models/emoji-32-train/`) is trained on every style listed above. Per renderer:",
        "Noto (Apache-2.0), Twemoji (CC BY 4.0) and Fluent (MIT) ask for attribution and,",
        "for Apache-2.0, a note of changes; none of them restricts how derived weights",
        "are licensed. OpenMoji (CC BY-SA 4.0) adds share-alike: on the conservative",
        "reading above, the weights, their samples and their transfers, and the bundled",
        "example images under `examples/emoji/` (held-out emoji as rendered, 64 px) are",
        "shared under CC BY-SA 4.0 with the attributions above, not under the code's",
        "licence. A share-alike-free model needs a training set without the openmoji",
        "styles (`--styles noto,twemoji,fluent-color,fluent-flat,fluent-hc`).",
        "",
        "## Renderer",
        "",
        "SVGs are rasterised by resvg (https://github.com/linebender/resvg) through the",
        "resvg-py package (pip); a build tool only, nothing of it is in the data.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "emoji"))
    ap.add_argument("--cache", default=None, help="npm tarballs + unpacked (default: OUT)")
    ap.add_argument("--styles", default=DEFAULT_STYLES,
                    help=f"comma-separated, from {','.join(STYLES)} (default {DEFAULT_STYLES})")
    ap.add_argument("--no-licenses", action="store_true", help="do not write DATA_LICENSES")
    ap.add_argument("--licenses-only", action="store_true",
                    help="only rewrite DATA_LICENSES from OUT/stats.json")
    args = ap.parse_args()
    if args.licenses_only:
        with open(os.path.join(args.out, "stats.json"), encoding="utf-8") as f:
            stats = json.load(f)
        with open(os.path.join(ROOT, "DATA_LICENSES"), "w", encoding="utf-8") as f:
            f.write(licences_text(None, stats["styles"], stats))
        return
    styles = [s for s in args.styles.split(",") if s]
    for s in styles:
        if s not in STYLES:
            sys.exit(f"unknown style {s!r}; known: {', '.join(STYLES)}")
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    dirs = fetch(args.cache or args.out)
    names = openmoji_names(dirs)

    per_style, notes = {}, {}
    for s in styles:
        per_style[s], notes[s] = index_style(s, dirs, names)
        log(f"{s}: {len(per_style[s])} emoji" + (
            f" ({len(notes[s]['unmatched'])} Fluent files unmatched)" if notes[s] else ""))
    keys = sorted(set.intersection(*(set(d) for d in per_style.values())), key=sort_key)
    held = [k for i, k in enumerate(keys) if i % HELDOUT_EVERY == HELDOUT_OFFSET]
    held_set = set(held)
    train = [k for k in keys if k not in held_set]
    log(f"intersection {len(keys)}: {len(train)} train, {len(held)} held out")

    imgs = {}
    for n, k in enumerate(keys):
        for s in styles:
            imgs[(k, s)] = render(per_style[s][k], s)
        if n % 200 == 0:
            log(f"rendered {n}/{len(keys)} emoji ({time.time() - t0:.0f} s)")

    kidx = {k: i for i, k in enumerate(keys)}
    meta = dict(styles=np.array(styles), keys=np.array(keys),
                names=np.array([names.get(k, "") for k in keys]))

    def pack(ks):
        ims = np.stack([imgs[(k, s)] for k in ks for s in styles])
        sty = np.array([i for _ in ks for i in range(len(styles))], dtype=np.uint8)
        emo = np.array([kidx[k] for k in ks for _ in styles], dtype=np.uint16)
        return dict(images=ims, style=sty, emoji=emo, **meta)

    files = {}
    for name, ks in (("train.npz", train), ("heldout.npz", held)):
        p = os.path.join(args.out, name)
        save_npz(p, pack(ks))
        files[name] = p
    cols = held[:24]
    contact_sheet(os.path.join(args.out, "contact_heldout.png"), imgs, cols, styles)
    spread = train[:: max(1, len(train) // 24)][:24]
    contact_sheet(os.path.join(args.out, "contact_train.png"), imgs, spread, styles)
    fluent = [s for s in styles if s.startswith("fluent")]
    if fluent and styles[0] != fluent[0]:
        contact_sheet(os.path.join(args.out, "contact_least_alike.png"), imgs,
                      least_alike(imgs, keys, styles[0], fluent[0]), styles)

    stats = {
        "packages": {n: v for n, (v, _) in PACKAGES.items()
                     if n in {STYLES[s][0] for s in styles}},
        "styles": styles,
        "per_style": {s: len(per_style[s]) for s in styles},
        "fluent_matching": {s: {k: v for k, v in notes[s].items()} for s in styles if notes[s]},
        "intersection": len(keys),
        "train_emoji": len(train),
        "heldout_emoji": len(held),
        "heldout_rule": f"index % {HELDOUT_EVERY} == {HELDOUT_OFFSET} of the intersection "
                        "sorted by codepoints",
        "heldout_keys": held,
        "heldout_names": [names.get(k, "") for k in held],
        "train_images": len(train) * len(styles),
        "heldout_images": len(held) * len(styles),
        "bytes": {n: os.path.getsize(p) for n, p in files.items()},
        "raw_bytes_train": len(train) * len(styles) * SIZE * SIZE * 3,
        "sha256": {n: sha256(p) for n, p in files.items()},
        "versions": {"numpy": np.__version__, "pillow": Image.__version__,
                     "resvg": __import__("resvg_py").__resvg_version__,
                     "resvg_py": __import__("resvg_py").__version__},
    }
    with open(os.path.join(args.out, "stats.json"), "w") as f:
        json.dump(stats, f, indent=1, ensure_ascii=False)
        f.write("\n")
    if not args.no_licenses:
        with open(os.path.join(ROOT, "DATA_LICENSES"), "w", encoding="utf-8") as f:
            f.write(licences_text(dirs, styles, stats))
    log(json.dumps({k: stats[k] for k in ("per_style", "intersection", "train_emoji",
                                          "heldout_emoji", "bytes")}))
    log(f"done in {time.time() - t0:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
