"""Copies of one real photo as users hand them over, classified by a bundle: 16-bit, EXIF-rotated, 8-bit upright.

The photo is skimage's ``chelsea`` (a cat, 300 x 451 RGB). Copies: the 8-bit upright original (PNG and JPEG),
its 8-bit and 16-bit grayscale versions, and the original stored sideways / upside down with the EXIF orientation
tag (6, 8, 3) that tells a viewer how to turn it. Each is classified with ``load_bundle`` (the decode path of
training, the cache and ``predict``); for contrast, the 16-bit and rotated copies are also run the way ``predict``
decoded them before (``convert("RGB")``, no EXIF).

    python benchmarks/photo_copies.py runs/demo/exports/student --out benchmarks/results/photo_copies.md
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from edgedistill import storage
from edgedistill.data.views import preprocess
from edgedistill.deploy import load_bundle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = ap.parse_args()
    model = load_bundle(args.bundle)
    rgb = data.chelsea()
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    tmp = Path(tempfile.mkdtemp())
    copies = {}

    def save(name: str, img: Image.Image, **kw) -> None:
        img.save(tmp / name, **kw)
        copies[name] = tmp / name

    save("upright_8bit.png", Image.fromarray(rgb))
    save("upright_8bit.jpg", Image.fromarray(rgb), quality=95)
    save("gray_8bit.png", Image.fromarray(gray))
    save("gray_16bit.png", Image.fromarray(gray.astype(np.uint16) * 257))
    for tag, stored in ((6, np.rot90(rgb, 1)), (8, np.rot90(rgb, -1)), (3, np.rot90(rgb, 2))):
        exif = Image.Exif()
        exif[0x0112] = tag
        save(f"exif_orientation_{tag}.jpg", Image.fromarray(np.ascontiguousarray(stored)), exif=exif, quality=95)

    def old_decode(path: Path) -> np.ndarray:  # predict's decoding before: clip wide modes, ignore EXIF
        return preprocess(Image.open(path).convert("RGB"), model.classifier.view)

    top1 = {name: model.classify(path)[0][0] for name, path in copies.items()}
    twin = {name: "gray_8bit.png" if name.startswith("gray") else "upright_8bit.png" for name in copies}
    lines = [f"Bundle `{args.bundle}`. Each copy against its 8-bit upright twin (the RGB original, or for the "
             "grayscale copies the 8-bit grayscale one: a gray photo has lost its colour, not its class).", "",
             "| copy | PIL mode, size | top-1 now (probability) | 8-bit upright twin: top-1 | same | top-1 decoded as before |",
             "|---|---|---|---|---|---|"]
    for name, path in copies.items():
        label, p = top1[name]
        ref = top1[twin[name]][0]
        before = model.labels[int(model.classifier.score(old_decode(path)[None])[0].argmax())]
        with Image.open(path) as im:
            mode = f"{im.mode}, {im.size[0]}x{im.size[1]}"
        lines.append(f"| {name} | {mode} | {label} ({p:.3f}) | {twin[name]}: {ref} | {'yes' if label == ref else 'no'} "
                     f"| {before} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        storage.write_text(args.out, text)


if __name__ == "__main__":
    main()
