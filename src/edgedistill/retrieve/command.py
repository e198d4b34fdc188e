"""``edgedistill retrieve``: plan, run, print the counts and how to train on the manifest."""

from __future__ import annotations

from pathlib import Path

from edgedistill.config import DEFAULT_CACHE_DIR, RetrieveConfig, TeacherConfig
from edgedistill.retrieve.run import plan_retrieval, run_retrieval


def format_counts(record: dict) -> str:
    """Per class: kept images, score range and the main drop reasons (markdown)."""
    lines = ["| class | kept | score range | dropped |", "| --- | ---: | --- | --- |"]
    for name in record["classes"]:
        pc = record["per_class"][name]
        rng = f"{pc['score_min']:.3f} - {pc['score_max']:.3f}" if pc["kept"] else "—"
        drops = ", ".join(f"{k} {v}" for k, v in sorted(pc["drops"].items(), key=lambda kv: -kv[1])) or "—"
        lines.append(f"| {name} | {pc['kept']} | {rng} | {drops} |")
    return "\n".join(lines)


def retrieve_command(
    prompts: str,
    pool: str | list[str],
    teacher: TeacherConfig = TeacherConfig(),
    retrieve: RetrieveConfig = RetrieveConfig(),
    out: str = "runs/retrieve",
    cache_dir: str = DEFAULT_CACHE_DIR,
    num_workers: int = 2,
) -> None:
    """Retrieve each prompt class's images from an unlabeled pool: a manifest (a labelled dataset) and a contact sheet.

    Args:
        prompts: prompts file: one class per line, ``name: synonym, synonym``; ``#`` comments.
        pool: unlabeled images: a folder, a .tar, a folder of webdataset shard tars, or a list of them.
        teacher: the teacher scoring the images (CLIP: text head; ImageNet classifier: label map).
        retrieve: selection, search and contact-sheet settings.
        out: output folder (manifest.csv, retrieval.json, head, contact_sheet.png, label map review).
        cache_dir: teacher-output cache root (the pool is cached once; a FAISS index is saved beside it).
        num_workers: image-decoding workers while caching.
    """
    plan = plan_retrieval(prompts, pool, teacher, retrieve, out, cache_dir)
    record = run_retrieval(plan, num_workers=num_workers)
    print(format_counts(record))
    print(f"{record['kept']} images kept from a pool of {record['pool']['images']} ({record['search']} search); "
          f"score: {record['score']}")
    print(f"manifest: {Path(out) / 'manifest.csv'}   contact sheet: {Path(out) / record['files']['contact_sheet']}")
    target = "embedding" if record["head"]["kind"] == "text" else "logits"
    print(f"train on it: edgedistill train --data.dataset manifest --data.root {Path(out) / 'manifest.csv'} "
          f"--data.train_labels false --train.target {target} --train.head {record['head']['kind']} "
          f"--train.head_path {Path(out) / 'head'}")
