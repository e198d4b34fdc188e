"""Build the demo archive bundled in the package from the CIFAR-10 training images.

Usage: python scripts/make_demo_data.py ~/.cache/edgedistill-data/train src/edgedistill/data/demo/cifar10-demo.tar.gz

Splits, with a fixed seed and disjointly, each class of the CIFAR-10 *training* split (5,000 images):
500 labeled images, 500 held-out evaluation images and the other 4,000 as unlabeled images
(labels hidden: flat file names, shuffled). The original JPEG bytes are copied unchanged; the
archive holds all 50,000 training images in about 16 MB. The CIFAR-10 test split is not used.
"""

import io
import random
import sys
import tarfile
from pathlib import Path

LABELED, EVAL, UNLABELED = 500, 500, 4000


def main(src: str, out: str, seed: int = 2026) -> None:
    rng = random.Random(seed)
    classes = sorted(p.name for p in Path(src).iterdir() if p.is_dir())
    members: list[tuple[str, Path]] = []
    unlabeled: list[Path] = []
    for c in classes:
        files = sorted((Path(src) / c).glob("*.jpg"))
        rng.shuffle(files)
        members += [(f"cifar10-demo/labeled/{c}/{f.name}", f) for f in files[:LABELED]]
        members += [(f"cifar10-demo/eval/{c}/{f.name}", f) for f in files[LABELED : LABELED + EVAL]]
        unlabeled += files[LABELED + EVAL : LABELED + EVAL + UNLABELED]
    rng.shuffle(unlabeled)  # hide the class order too
    members += [(f"cifar10-demo/unlabeled/{i:05d}.jpg", f) for i, f in enumerate(unlabeled)]
    readme = (
        "CIFAR-10 demo subset for edgedistill.\n"
        "Drawn from the CIFAR-10 training split (Krizhevsky, 2009, https://www.cs.toronto.edu/~kriz/cifar.html),\n"
        f"seed {seed}: per class {LABELED} labeled, {EVAL} evaluation, {UNLABELED} unlabeled images (labels hidden).\n"
    ).encode()
    with tarfile.open(out, "w:gz", compresslevel=9) as tar:
        info = tarfile.TarInfo("cifar10-demo/README.txt")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
        for name, path in members:
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    print(f"wrote {out}: {len(members)} images")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
