"""The contact sheet: per class its top images and its borderline (lowest kept) ones, for a person to check."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from edgedistill import storage
from edgedistill.data.images import BadImageError
from edgedistill.retrieve.pool import PoolRows
from edgedistill.retrieve.select import Kept


def contact_sheet(pool: PoolRows, kept: list[list[Kept]], classes: Sequence[str], path: Path, top: int = 8,
                  border: int = 8, tile: int = 64) -> Path:
    """A PNG grid, one row per class: its ``top`` highest-scoring images, then its ``border`` lowest kept ones.

    Each tile is captioned with its score; a person sees at a glance whether a class holds what its name says
    and where its threshold cuts.
    """
    from PIL import Image, ImageDraw

    label_w, cap_h, gap = 150, 14, 12
    n_cols = top + border
    width = label_w + n_cols * (tile + 2) + gap
    height = 20 + len(classes) * (tile + cap_h + 6)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((label_w, 4), f"top {top} by score", fill="black")
    draw.text((label_w + top * (tile + 2) + gap, 4), f"borderline: the {border} lowest kept", fill="black")
    for c, name in enumerate(classes):
        rows = kept[c] if c < len(kept) else []
        y = 20 + c * (tile + cap_h + 6)
        draw.text((4, y + tile // 2 - 6), f"{name[:18]} ({len(rows)})", fill="black")
        shown = [(0, r) for r in rows[:top]] + [(1, r) for r in rows[max(top, len(rows) - border):]]
        for k, (part, r) in enumerate(shown):
            col = k if part == 0 else top + (k - min(top, len(rows)))
            x = label_w + col * (tile + 2) + (gap if part else 0)
            try:
                img = pool.load(r.gid).resize((tile, tile))
            except BadImageError:
                img = Image.new("RGB", (tile, tile), "grey")
            sheet.paste(img, (x, y))
            draw.text((x + 2, y + tile), f"{r.score:.2f}", fill="black")
    with storage.atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
