"""Zero-label retrieval: the prompts file, label maps from names, selection semantics, exact vs FAISS search,
the manifest as a dataset, the pool source, and ``distill --prompts --pool`` end to end with new prompts at predict."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, tiny_teacher_cfg
from edgedistill.config import DataConfig, DistillConfig, RetrieveConfig, TeacherConfig, from_dict
from edgedistill.errors import ConfigError, DataError
from edgedistill.prompts import parse_prompts, read_prompts

pytestmark = pytest.mark.filterwarnings("ignore:skipping cannot read image")  # the pool's broken file, on purpose

COLOURS = {"red": (220, 40, 40), "green": (40, 220, 40), "blue": (40, 40, 220)}
PROMPTS = "# colours\nred: crimson, scarlet\ngreen   # a name alone\nblue: navy\n"


def write_pool(root: Path, per_class: int = 8, noise: int = 6, shard: int = 4) -> Path:
    """``root/``: class-coloured PNGs, two exact duplicates, noise distractors, a broken file and a webdataset shard."""
    rng = np.random.default_rng(0)

    def coloured(c: str) -> Image.Image:
        return Image.fromarray(np.clip(np.array(COLOURS[c]) + rng.integers(-40, 40, (32, 32, 3)), 0, 255).astype(np.uint8))

    (root / "colours").mkdir(parents=True)
    (root / "noise").mkdir()
    for i in range(per_class * 3):
        coloured(list(COLOURS)[i % 3]).save(root / "colours" / f"{i:03d}.png")
    for i in range(2):  # exact copies: identical embeddings
        shutil.copy(root / "colours" / f"{i:03d}.png", root / "colours" / f"dup_{i:03d}.png")
    for i in range(noise):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)).save(root / "noise" / f"{i:03d}.jpg")
    (root / "noise" / "broken.jpg").write_bytes(b"not an image")
    (root / "shards").mkdir()
    with tarfile.open(root / "shards" / "000000.tar", "w") as tf:  # webdataset layout: key.png beside key.json/.cls
        for i in range(shard):
            buf = io.BytesIO()
            coloured(list(COLOURS)[i % 3]).save(buf, format="PNG")
            for name, data in ((f"{i:06d}.png", buf.getvalue()), (f"{i:06d}.json", b'{"caption": "x"}'),
                               (f"{i:06d}.cls", b"1")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return root


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("retrieve")
    write_pool(root / "pool")
    (root / "prompts.txt").write_text(PROMPTS)
    return root


def _rows(manifest: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(manifest.read_text())))


# ----------------------------------------------------------------------------- prompts


def test_prompts_file_format():
    classes = parse_prompts(PROMPTS)
    assert [(c.name, c.synonyms, c.line) for c in classes] == [
        ("red", ("crimson", "scarlet"), 2), ("green", (), 3), ("blue", ("navy",), 4)]
    assert classes[0].terms == ("red", "crimson", "scarlet")
    assert [c.name for c in parse_prompts("sports car:  race   car , racer\nvan")] == ["sports car", "van"]


@pytest.mark.parametrize("text, needle", [
    ("", "names no classes"),
    ("# only a comment\n\n", "names no classes"),
    ("cat\n", "names one class ('cat'); a classifier needs at least two"),
    ("cat\ndog\nCat\n", "p.txt:3: 'Cat' is already given on line 1 (class 'cat')"),
    ("cat: kitten\ndog: kitten\n", "p.txt:2: 'kitten' is already given on line 1 (class 'cat')"),
    ("sports_car\nsports car\n", "p.txt:2: 'sports car' is already given on line 1"),
    ("cat: kitten,\ndog\n", "p.txt:1: 'cat: kitten,' has an empty synonym"),
    ("cat:\ndog\n", "p.txt:1: 'cat:' has an empty synonym"),
    (": kitten\ndog\n", "p.txt:1: ': kitten' has no class name"),
    ("n02419796\ndog\n", "class name 'n02419796' is a WordNet id"),
])
def test_prompts_file_mistakes_are_one_line(text, needle):
    with pytest.raises(ConfigError) as e:
        parse_prompts(text, "p.txt")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_read_prompts_errors(tmp_path):
    with pytest.raises(ConfigError, match="Prompts file 'nope.txt' does not exist"):
        read_prompts("nope.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\ndog\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8"):
        read_prompts(tmp_path / "latin1.txt")


def test_text_head_averages_every_term_over_the_templates():
    from edgedistill.heads import build_text_head
    from edgedistill.heads.zero_shot import prompt_head
    from edgedistill.teachers import create_teacher

    teacher = create_teacher(tiny_teacher_cfg())
    head, review = prompt_head("text", parse_prompts("red: crimson, n04530566\nblue\n"), teacher, templates="simple")
    per_term = build_text_head(teacher, ["red", "crimson", "blue"], "simple").text_embeddings  # wnid skipped
    want = torch.nn.functional.normalize(torch.stack([per_term[:2].mean(0), per_term[2]]), dim=-1)
    assert review is None and head.logit_scale == teacher.logit_scale
    torch.testing.assert_close(head.text_embeddings, want)
    assert not torch.allclose(head.text_embeddings[0], per_term[0])  # the synonym counts


# ----------------------------------------------------------------------------- label maps from names


def test_label_map_from_names_covers_hyponyms_with_reasons():
    from edgedistill.heads.label_map import _shipped, format_review, label_map_from_names

    head, review = label_map_from_names(["dog", "cat", "deer"], {"deer": ["antelope"]})
    shipped = json.loads(_shipped()["cifar10"].read_text())
    assert head.groups[0] == shipped["dog"] == list(range(151, 269))  # every ImageNet dog breed, nothing else
    assert set(head.groups[1]) == {281, 282, 283, 284, 285, 286, 287}  # 'cat, true cat' (sense 1): no big cats
    assert head.groups[2] == [351, 352, 353]  # deer: no cervid in ImageNet-1k; the synonym's antelopes
    dog = review["classes"]["dog"]
    assert all("hypernym 'dog, domestic dog, Canis familiaris' (n02084071" in m["reasons"][0] for m in dog["matches"])
    assert any(c["index"] == 934 for c in dog["review_candidates"])  # hot dog: contains 'dog', not matched
    assert any(s["sense"] == 7 and s["term"] == "cat" for s in review["classes"]["cat"]["skipped_senses"])
    assert any("synonym 'antelope'" in m["reasons"][0] for m in review["classes"]["deer"]["matches"])
    text = format_review(review)
    assert "dog: 118 ImageNet classes" in text and "skipped sense 7 of 'cat'" in text
    assert "imagenet_hierarchy" not in _shipped()  # the hierarchy beside the maps is not a map


def test_prompt_synonyms_reach_wordnet_and_the_review_names_near_misses():
    """'ship: boat' takes the boats in; without it the review names them (under 'vessel, watercraft', as a ship is)."""
    from edgedistill.heads.label_map import format_review
    from edgedistill.heads.zero_shot import prompt_head

    teacher = SimpleNamespace(num_classes=1000)
    plain, review = prompt_head("label_map", parse_prompts("airplane\nship\n"), teacher)
    assert plain.groups == [[404], [403, 510, 628, 724, 833, 913]]  # airliner; the ImageNet ships
    near = {m["index"]: m for m in review["classes"]["ship"]["near_misses"]}
    assert {472, 554, 576, 625, 814, 914} <= set(near) and near[814]["synonym"] == "boat"  # speedboat & co.
    assert [m["index"] for m in review["classes"]["airplane"]["near_misses"]] == [895]  # warplane
    text = format_review(review)
    assert "nearly matched, left out: 895 warplane" in text and "'airplane: warplane'" in text and "'ship: boat'" in text
    wide, review = prompt_head("label_map", parse_prompts("airplane: warplane\nship: boat\n"), teacher)
    assert wide.groups == [[404, 895], sorted([403, 510, 628, 724, 833, 913, 472, 554, 576, 625, 814, 914])]
    assert not {472, 554, 814} & {m["index"] for m in review["classes"]["ship"]["near_misses"]}  # taken: no longer missed


def test_label_map_from_names_refuses_an_unknown_name_and_pins_wordnet_ids():
    from edgedistill.heads.label_map import imagenet_hierarchy, label_map_from_names, with_other

    with pytest.raises(ConfigError) as e:
        label_map_from_names(["dog", "deer"])
    assert "['deer'] match no ImageNet class" in str(e.value) and "synonym" in str(e.value) and "\n" not in str(e.value)
    head, _ = label_map_from_names(["ship", "car"], {"ship": ["n04530566"]})  # 'vessel, watercraft' (sense 2)
    assert len(head.groups[0]) > 6 and 628 in head.groups[0]  # liner, ... and now every watercraft
    other = with_other(head)
    assert other.num_classes == 3 and sorted(sum(other.groups, [])) == list(range(1000))
    h = imagenet_hierarchy()
    assert len(h["classes"]) == 1000 and "Princeton" in h["license"] and "wordnet-base" in h["source"]


# ----------------------------------------------------------------------------- selection and search (pure)


def test_select_class_filters_in_order_and_says_why():
    from edgedistill.retrieve import apply_balance, select_class

    scores = np.array([[0.9, 0.1, 0.0], [0.85, 0.1, 0.0], [0.8, 0.9, 0.0], [0.7, 0.65, 0.0], [0.6, 0.1, 0.0],
                       [0.55, 0.1, 0.0], [0.5, 0.0, 0.0], [0.2, 0.0, 0.0]], np.float32)
    emb = np.eye(8, dtype=np.float32)
    emb[1] = emb[0]  # image 1 duplicates image 0
    cfg = RetrieveConfig(top_k=3, min_score=0.3, margin=0.1, dedup=0.9)
    kept, drops = select_class(0, ["a", "b", "c"], np.arange(100, 108), scores, emb, cfg)
    assert [(k.gid, k.rank) for k in kept] == [(100, 1), (104, 5), (105, 6)]
    assert drops == {"near-duplicate": 1, "another class scores higher": 1, "margin over the second class too small": 1,
                     "beyond top_k": 1, "below min_score": 1}
    assert kept[1].why.startswith("rank 5 for 'a'; score 0.600 >= min_score 0.3; 0.500 over 'b' >= margin 0.1")
    assert kept[0].margin == pytest.approx(0.8)
    no_dedup, _ = select_class(0, ["a", "b", "c"], np.arange(8), scores, None, RetrieveConfig(top_k=3, dedup=None))
    assert [k.gid for k in no_dedup] == [0, 1, 3]  # margin 0: the best class is enough

    lists = [list(range(10)), list(range(4)), []]
    lists = [[SimpleNamespace(why="") for _ in k] for k in lists]
    cap, dropped = apply_balance(lists, 1.5)
    assert cap == 6 and dropped == [4, 0, 0] and [len(k) for k in lists] == [6, 4, 0]
    assert "capped at 6" in lists[0][0].why and apply_balance(lists, None) == (None, [0, 0, 0])


class _FakeCache:
    """What PoolRows reads of a TeacherCache: sharded embeddings and the valid mask."""

    def __init__(self, embedding: np.ndarray, valid: np.ndarray) -> None:
        from edgedistill.cache import ShardedArray

        self.embedding, self.valid = ShardedArray([embedding[:5], embedding[5:]]), valid

    def __len__(self) -> int:
        return len(self.valid)


def _fake_pool(embeddings: list[np.ndarray], valid: list[np.ndarray]):
    from edgedistill.retrieve import PoolRows

    caches = {f"s{i}": _FakeCache(e, v) for i, (e, v) in enumerate(zip(embeddings, valid))}
    return PoolRows(list(caches), caches, {k: None for k in caches})


def test_exact_search_streams_shards_and_breaks_ties_by_pool_order():
    from edgedistill.heads import TextHead
    from edgedistill.retrieve import Scorer, exact_search

    rng = np.random.default_rng(0)
    embs = [rng.normal(size=(9, 4)).astype(np.float16), rng.normal(size=(7, 4)).astype(np.float16)]
    embs[1][3] = embs[0][2]  # a tie across sources
    valid = [np.ones(9, bool), np.ones(7, bool)]
    valid[0][4] = False  # an unreadable image is never a candidate
    pool = _fake_pool(embs, valid)
    scorer = Scorer(TextHead(torch.randn(3, 4), 100.0), "text")
    found = exact_search(pool, scorer, 5)
    allx = np.concatenate([e.astype(np.float32) for e in embs])
    s = scorer(allx)
    s[4] = -np.inf
    for c in range(3):
        want = np.lexsort((np.arange(16), -s[:, c]))[:5]
        assert list(found[c]) == list(want)
    assert all(4 not in f for f in exact_search(pool, scorer, 16))
    np.testing.assert_array_equal(pool.rows("embedding", np.array([12, 2, 0])), allx[[12, 2, 0]])


def test_query_margin_is_the_neighbour_similarity_over_the_other_classes_and_the_background():
    from edgedistill.heads import TextHead
    from edgedistill.retrieve import Query, Scorer, centered, knn_similarity

    z = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 0, 1]], np.float32)
    refs = np.array([[1, 0, 0], [0, 1, 0], [0.6, 0.8, 0]], np.float32)
    np.testing.assert_allclose(knn_similarity(z, refs, 2), [(1 + 0.6) / 2, (1 + 0.8) / 2, 0], atol=1e-6)
    assert np.isneginf(knn_similarity(z, refs[:0], 2)).all()
    pos = [np.array([[1, 0, 0]], np.float32), np.array([[0, 1, 0]], np.float32), np.zeros((0, 3), np.float32)]
    q = Query(Scorer(TextHead(torch.eye(3), 100.0), "text"), pos, np.array([[0, 0, 1]], np.float32), 0.5, knn=1)
    x = np.array([[3, 4, 0], [0, 0, 2]], np.float32)  # sims to the classes: (0.6, 0.8), (0, 0); to the background 0, 1
    np.testing.assert_allclose(q.margins(x), [[0.6 - 0.8, 0.8 - 0.6, 0], [0 - 1, 0 - 1, 0]], atol=1e-6)
    np.testing.assert_allclose(q.scores({"embedding": x}), [[0.6 - 0.1, 0.8 + 0.1, 0], [-0.5, -0.5, 1]], atol=1e-6)
    alone = Query(q.head, [pos[0], pos[2], pos[2]], np.zeros((0, 3), np.float32), 1.0, knn=1)
    np.testing.assert_allclose(alone.margins(x)[:, 0], [0.6, 0], atol=1e-6)  # nothing else: the similarity itself
    # measured from the pool's mean: all-positive features [1, 1] and [1, 0.8] are close; less their mean, opposite
    feats = np.array([[1, 1, 0], [1, 0.8, 0]], np.float32)
    center = (feats / np.linalg.norm(feats, axis=1, keepdims=True)).mean(0)
    c, raw = centered(feats, center), centered(feats, None)
    assert float(c[0] @ c[1]) == pytest.approx(-1, abs=1e-5) and float(raw[0] @ raw[1]) > 0.99


def test_reranking_pulls_in_the_images_near_the_most_confident_ones():
    """Three clear class-0 images (head 0.9), five of their kind the head scores 0.5, five distractors it scores 0.6
    (and a background that scores low): the head's top 5 holds two distractors; one round of feedback from the top 3
    ranks all five of the kind ahead of every distractor."""
    from edgedistill.heads import TextHead
    from edgedistill.retrieve import Query, Scorer, background, exact_search, refine

    rng = np.random.default_rng(0)
    proto = np.tile([0.9, 0, 0.43, 0, 0], (3, 1))
    kind = np.tile([0.5, 0, 0.86, 0, 0], (5, 1)) + rng.normal(0, 0.01, (5, 5))
    distractor = np.tile([0.6, 0, -0.5, 0.6, 0], (5, 1)) + rng.normal(0, 0.01, (5, 5))
    other = np.tile([0, 1, 0, 0, 0.3], (3, 1))
    back = np.tile([0.05, 0.05, -0.3, 0.9, 0.3], (20, 1)) + rng.normal(0, 0.05, (20, 5))  # near the distractors
    emb = np.concatenate([proto, distractor, kind, other, back]).astype(np.float32)  # ids 0-2, 3-7, 8-12, 13-15, 16-
    pool = _fake_pool([emb], [np.ones(len(emb), bool)])
    head = Scorer(TextHead(torch.eye(5)[:2], 100.0), "text")
    found = exact_search(pool, head, 8)
    assert set(found[0][:3]) == {0, 1, 2} and set(found[0][3:5]) < set(range(3, 8))  # the head: then distractors
    assert set(background(pool, head, 0, n=10)) <= set(range(16, 36))  # the low scorers
    cfg = RetrieveConfig(rerank=1, rerank_top=3, rerank_weight=1.0)
    scorer, refound, rounds = refine(pool, head, found, None, cfg, 8)
    assert isinstance(scorer, Query) and rounds == [{"examples": [0, 0], "pool": [3, 3], "background": 18}]
    assert set(refound[0][:8]) == set(range(3)) | set(range(8, 13))  # prototypes and their kind; no distractor
    assert refine(pool, head, found, None, RetrieveConfig(rerank=0), 8)[1] is found  # off: the head's own


def test_label_map_scores_are_group_probabilities():
    from edgedistill.heads import LabelMapHead
    from edgedistill.retrieve import Scorer

    logits = np.random.default_rng(1).normal(size=(4, 10)).astype(np.float32)
    scorer = Scorer(LabelMapHead([[0, 1], [5]], num_teacher_classes=10), "label_map")
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(scorer(logits), np.stack([p[:, 0] + p[:, 1], p[:, 5]], 1), rtol=1e-5)
    assert scorer.array == "logits"


# ----------------------------------------------------------------------------- the pool as a dataset


def test_pool_dataset_takes_images_of_folders_and_shards(pool, tmp_path):
    from edgedistill.data.splits import build_splits

    for c in COLOURS:
        (tmp_path / "held" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8), COLOURS[c]).save(tmp_path / "held" / c / "0.png")
    splits = build_splits(DataConfig(dataset="pool", root=str(pool / "pool"), prompts=str(pool / "prompts.txt"),
                                     held_out=str(tmp_path / "held")))
    assert splits.classes == ["red", "green", "blue"]
    assert splits.sources_of("unlabeled") == ["pool/pool", "pool/pool~shards_000000"]
    assert len(splits.sources["pool/pool"]) == 24 + 2 + 6 + 1
    assert splits.sources["pool/pool~shards_000000"].names == [f"{i:06d}.png" for i in range(4)]  # not .json/.cls
    assert splits.size("train") == 0 and splits.size("unlabeled") == 37 and (splits.labels("unlabeled") == -1).all()
    assert splits.size("test") == 3 and sorted(splits.labels("test")) == [0, 1, 2]
    sub = build_splits(DataConfig(dataset="pool", root=str(pool / "pool"), prompts=str(pool / "prompts.txt"),
                                  max_unlabeled=10))
    assert sub.size("unlabeled") == 10
    with pytest.raises(ConfigError, match="dataset=pool has no class folders: give a prompts file"):
        DataConfig(dataset="pool", root=str(pool / "pool"))
    with pytest.raises(DataError, match="Pool path .* does not exist"):
        build_splits(DataConfig(dataset="pool", root=str(tmp_path / "nope"), prompts=str(pool / "prompts.txt")))
    with pytest.raises(ConfigError, match="only pool and manifest datasets take a held-out folder"):
        DataConfig(dataset="cifar10", held_out="x")


# ----------------------------------------------------------------------------- retrieval on a pool (tiny CLIP)


@pytest.fixture(scope="module")
def clip_run(pool):
    from edgedistill.retrieve import plan_retrieval, run_retrieval

    cfg = RetrieveConfig(top_k=6, candidates=12, dedup=None, templates="simple", search="exact", rerank=0)  # the head
    plan = plan_retrieval(pool / "prompts.txt", pool / "pool", tiny_teacher_cfg(), cfg, pool / "exact", pool / "cache")
    return plan, run_retrieval(plan, num_workers=0, log=lambda m: None)


def test_retrieval_writes_a_checked_manifest_head_and_sheet(clip_run, pool):
    from edgedistill.heads import load_head
    from edgedistill.retrieve import PoolRows, Scorer

    plan, record = clip_run
    out = pool / "exact"
    for name in ("manifest.csv", "retrieval.json", "head.json", "head.safetensors", "contact_sheet.png"):
        assert (out / name).is_file(), name
    rows = _rows(out / "manifest.csv")
    assert record["kept"] == len(rows) > 0 and record["pool"]["images"] == 37 and record["pool"]["readable"] == 36
    assert record["search"] == "exact" and record["classes"] == ["red", "green", "blue"]
    assert {n: sum(r["class"] == n for r in rows) for n in record["classes"]} == record["counts"]
    head = load_head(out / "head")
    assert head.kind == "text" and head.num_classes == 3
    # Every kept row: its class is the image's best under the saved head, scores as recorded, ranks increase.
    from edgedistill.cache import ensure_cache

    caches = ensure_cache(plan.data, plan.teacher_cfg, "unlabeled", pool / "cache", teacher=plan.teacher, splits=plan.splits)
    rows_pool = PoolRows(plan.splits.sources_of("unlabeled"), caches, plan.splits.sources)
    scorer = Scorer(head, "text")
    for name in record["classes"]:
        mine = [r for r in rows if r["class"] == name]
        assert len(mine) <= 6 and [int(r["rank"]) for r in mine] == sorted(int(r["rank"]) for r in mine)
        for r in mine:
            gid = rows_pool.offsets[rows_pool.keys.index(r["source"])] + int(r["index"])
            s = scorer(rows_pool.rows("embedding", [gid]))[0]
            assert int(np.argmax(s)) == record["classes"].index(name)
            assert float(r["score"]) == pytest.approx(float(s[np.argmax(s)]), abs=1e-5)
            assert r["why"].startswith(f"rank {r['rank']} for '{name}'")
    assert all("broken" not in r["path"] for r in rows)
    assert all(r["path"].endswith(".png") for r in rows if r["source"].endswith("shards_000000"))
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size[1] >= 3 * 64


def test_thresholds_margin_and_dedup_on_a_real_pool(clip_run, pool):
    from edgedistill.retrieve import plan_retrieval, run_retrieval

    _, base = clip_run
    scores = sorted(float(r["score"]) for r in _rows(pool / "exact" / "manifest.csv"))
    cut = scores[len(scores) // 2]
    cfg = RetrieveConfig(top_k=6, candidates=12, dedup=0.99999, min_score=cut, margin=0.001, templates="simple",
                         search="exact", rerank=0)
    plan = plan_retrieval(pool / "prompts.txt", pool / "pool", tiny_teacher_cfg(), cfg, pool / "strict", pool / "cache")
    record = run_retrieval(plan, num_workers=0, log=lambda m: None)
    rows = _rows(pool / "strict" / "manifest.csv")
    assert all(float(r["score"]) >= cut and float(r["margin"]) >= 0.001 for r in rows)
    paths = {Path(r["path"]).name for r in rows}
    assert not {"000.png", "dup_000.png"} <= paths and not {"001.png", "dup_001.png"} <= paths  # duplicates kept once
    assert record["kept"] <= base["kept"]
    dropped = sum(sum(pc["drops"].values()) for pc in record["per_class"].values())
    assert dropped > 0 and any("below min_score" in pc["drops"] for pc in record["per_class"].values())


def test_rerun_reuses_a_finished_retrieval_and_a_changed_one_is_redone(clip_run, pool):
    from edgedistill.retrieve import plan_retrieval, run_retrieval

    plan, _ = clip_run
    stamp = (pool / "exact" / "manifest.csv").stat().st_mtime_ns
    msgs = []
    run_retrieval(plan, num_workers=0, log=msgs.append)
    assert (pool / "exact" / "manifest.csv").stat().st_mtime_ns == stamp and "reusing" in msgs[0]
    other = plan_retrieval(pool / "prompts.txt", pool / "pool", tiny_teacher_cfg(),
                           RetrieveConfig(top_k=2, dedup=None, templates="simple"), pool / "exact", pool / "cache")
    assert other.key != plan.key


def test_example_images_join_the_query_are_cached_and_never_retrieved(clip_run, pool, tmp_path):
    from edgedistill.retrieve import PoolRows, plan_retrieval, run_retrieval

    ex = tmp_path / "examples"
    head_rows = [r for r in _rows(pool / "exact" / "manifest.csv") if "::" not in r["path"]]
    by_class = {c: [r["path"] for r in head_rows if r["class"] == c] for c in ("red", "green", "blue")}
    first, second = sorted(by_class, key=lambda c: -len(by_class[c]))[:2]  # (a random teacher favours some colours)
    picked = {first: by_class[first][:2], second: by_class[second][:1]}  # what the head alone keeps first
    for cls, paths in picked.items():
        (ex / cls).mkdir(parents=True)
        for path in paths:
            shutil.copy(path, ex / cls / f"example_{Path(path).name}")
    cfg = RetrieveConfig(top_k=6, candidates=12, dedup=None, templates="simple", search="exact", examples=str(ex),
                         rerank=1, rerank_top=2, rerank_weight=0.5)
    plan = plan_retrieval(pool / "prompts.txt", pool / "pool", tiny_teacher_cfg(), cfg, tmp_path / "out", pool / "cache")
    record = run_retrieval(plan, num_workers=0, log=lambda m: None)
    counts = {c: len(v) for c, v in picked.items() if v}
    assert plan.key != clip_run[0].key and record["query"]["examples"]["counts"] == counts
    n_ex = [counts.get(c, 0) for c in record["classes"]]
    assert record["query"]["positives"][0]["examples"] == n_ex and record["query"]["positives"][0]["pool"] == [0, 0, 0]
    assert record["query"]["positives"][1]["examples"] == n_ex
    assert [m for m in (pool / "cache").rglob("manifest.json")  # cached like a pool source
            if m.relative_to(pool / "cache").parts[1:3] == ("examples", "examples")]
    rows = _rows(tmp_path / "out" / "manifest.csv")
    digests = {hashlib.sha256(Path(path).read_bytes()).digest() for ps in picked.values() for path in ps}
    assert len(picked[first]) == 2 and rows and not any(hashlib.sha256(Path(r["path"]).read_bytes()).digest() in digests
                                                        for r in rows if "::" not in r["path"])  # by content
    assert sum(pc["drops"].get("one of the example images", 0) for pc in record["per_class"].values()) >= 2
    # a row's score is its head cosine plus the weighted neighbour margin, as its why says
    from edgedistill.cache import ensure_cache
    from edgedistill.retrieve import Scorer

    caches = ensure_cache(plan.data, plan.teacher_cfg, "unlabeled", pool / "cache", teacher=plan.teacher, splits=plan.splits)
    rp = PoolRows(plan.splits.sources_of("unlabeled"), caches, plan.splits.sources)
    head = Scorer(plan.head, "text")
    for r in rows[:4]:
        gid = rp.offsets[rp.keys.index(r["source"])] + int(r["index"])
        s0 = head(rp.rows("embedding", [gid]))[0, record["classes"].index(r["class"])]
        q, m = (float(v) for v in re.search(r"query (-?[\d.]+) \+ 0.5 x neighbour margin (-?[\d.]+)", r["why"]).groups())
        assert q == pytest.approx(s0, abs=1e-3) and float(r["score"]) == pytest.approx(q + 0.5 * m, abs=2e-3)
        assert "query alone: rank" in r["why"]
    with pytest.raises(ConfigError, match=r"retrieve.examples=.*folder\(s\) \['purple'\] name no class of the prompts"):
        (ex / "purple").mkdir()
        plan_retrieval(pool / "prompts.txt", pool / "pool", tiny_teacher_cfg(), cfg, tmp_path / "o2", pool / "cache")
    with pytest.raises(ConfigError, match="retrieve.examples='/nonexistent' is not a folder"):
        plan_retrieval(pool / "prompts.txt", pool / "pool", tiny_teacher_cfg(), RetrieveConfig(examples="/nonexistent"),
                       tmp_path / "o3", pool / "cache")


def test_exact_and_faiss_search_give_the_same_images(clip_run, pool):
    pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install 'edgedistill[retrieve]')")
    from edgedistill.retrieve import FAISS_INDEX, plan_retrieval, run_retrieval

    plan, record = clip_run
    cfg = RetrieveConfig(top_k=6, candidates=12, dedup=None, templates="simple", search="faiss", rerank=0)
    fplan = plan_retrieval(pool / "prompts.txt", pool / "pool", tiny_teacher_cfg(), cfg, pool / "faiss", pool / "cache")
    frecord = run_retrieval(fplan, num_workers=0, log=lambda m: None)
    assert frecord["search"] == "faiss" and frecord["key"] == record["key"]  # the search is not part of the result
    assert (pool / "faiss" / "manifest.csv").read_text() == (pool / "exact" / "manifest.csv").read_text()
    indexes = sorted((pool / "cache").rglob(FAISS_INDEX))
    assert len(indexes) == 2  # one per pool source, saved beside its cache
    stamps = [p.stat().st_mtime_ns for p in indexes]
    shutil.rmtree(pool / "faiss")
    run_retrieval(fplan, num_workers=0, log=lambda m: None)
    assert [p.stat().st_mtime_ns for p in indexes] == stamps  # built once, then read


def test_faiss_missing_or_misused_is_one_line(pool, monkeypatch):
    from edgedistill.retrieve import plan_retrieval

    monkeypatch.setitem(sys.modules, "faiss", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"needs FAISS: pip install 'edgedistill\[retrieve\]'"):
        plan_retrieval(pool / "prompts.txt", pool / "pool", tiny_teacher_cfg(),
                       RetrieveConfig(search="faiss", templates="simple"), pool / "f", pool / "cache")
    plan = plan_retrieval(pool / "prompts.txt", pool / "pool", tiny_teacher_cfg(),
                          RetrieveConfig(search="auto", faiss_min_pool=1, templates="simple"), pool / "f", pool / "cache")
    assert plan.search == "exact"  # auto without faiss: the exact search, no extra package


def test_manifest_is_a_dataset_and_edits_are_checked(clip_run, pool, tmp_path):
    from edgedistill.data.splits import build_splits

    _, record = clip_run
    out = tmp_path / "copy"
    shutil.copytree(pool / "exact", out)
    rows = _rows(out / "manifest.csv")
    splits = build_splits(DataConfig(dataset="manifest", root=str(out / "manifest.csv"), val_fraction=0.0))
    assert splits.classes == record["classes"] and splits.size("train") == len(rows)
    assert splits.sources_of("train")[0].startswith("pool/pool")  # the pool's sources: its cache is reused
    ds = splits.dataset("train", None)
    got = sorted((ds.locate(j)[0].source, ds.locate(j)[1], splits.classes[int(ds.labels[j])]) for j in range(len(ds)))
    assert got == sorted((r["source"], int(r["index"]), r["class"]) for r in rows)

    # A person deletes a row after checking the contact sheet: the dataset follows.
    text = (out / "manifest.csv").read_text().splitlines()
    (out / "manifest.csv").write_text("\n".join(text[:1] + text[2:]) + "\n")
    assert build_splits(DataConfig(dataset="manifest", root=str(out / "manifest.csv"), val_fraction=0.0)).size("train") == len(rows) - 1
    bad = text[1].replace(f",{rows[0]['class']},", ",purple,", 1)
    (out / "manifest.csv").write_text("\n".join(text[:1] + [bad]) + "\n")
    with pytest.raises(DataError, match="class 'purple' is not one of the retrieval's classes"):
        build_splits(DataConfig(dataset="manifest", root=str(out / "manifest.csv")))
    (out / "manifest.csv").write_text("\n".join(text[:1] + [text[1], text[1]]) + "\n")
    with pytest.raises(DataError, match="is listed again"):
        build_splits(DataConfig(dataset="manifest", root=str(out / "manifest.csv")))
    (out / "retrieval.json").unlink()
    with pytest.raises(DataError, match="has no retrieval.json beside it"):
        build_splits(DataConfig(dataset="manifest", root=str(out / "manifest.csv")))


def test_manifest_refuses_a_changed_pool(tmp_path):
    from edgedistill.data.splits import build_splits
    from edgedistill.retrieve import plan_retrieval, run_retrieval

    write_pool(tmp_path / "pool", per_class=3, noise=1, shard=1)
    (tmp_path / "p.txt").write_text(PROMPTS)
    cfg = RetrieveConfig(top_k=2, dedup=None, templates="simple")
    plan = plan_retrieval(tmp_path / "p.txt", tmp_path / "pool", tiny_teacher_cfg(), cfg, tmp_path / "out", tmp_path / "c")
    run_retrieval(plan, num_workers=0, log=lambda m: None)
    Image.new("RGB", (8, 8)).save(tmp_path / "pool" / "colours" / "new.png")
    with pytest.raises(DataError, match="changed since the retrieval"):
        build_splits(DataConfig(dataset="manifest", root=str(tmp_path / "out" / "manifest.csv")))


# ----------------------------------------------------------------------------- an ImageNet-classifier teacher


@pytest.fixture(scope="module")
def timm_teacher(tmp_path_factory) -> TeacherConfig:
    import timm

    path = tmp_path_factory.mktemp("timm") / "resnet10t.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet10t", num_classes=1000).state_dict(), path)
    return TeacherConfig(kind="timm", model="resnet10t", pretrained=str(path), image_size=32, device="cpu", batch_size=16)


def test_label_map_teacher_retrieves_by_probability_with_other_class(pool, timm_teacher, tmp_path):
    from edgedistill.data.splits import build_splits
    from edgedistill.heads import load_head
    from edgedistill.retrieve import plan_retrieval, run_retrieval

    (tmp_path / "p.txt").write_text("dog\ncat: kitten\nbird\n")
    msgs: list[str] = []
    cfg = RetrieveConfig(top_k=4, dedup=None, other=3, other_below=0.5, rerank=0)  # scores: the probabilities
    plan = plan_retrieval(tmp_path / "p.txt", pool / "pool", timm_teacher, cfg, tmp_path / "out", tmp_path / "cache")
    assert plan.kind == "label_map" and plan.classes == ["dog", "cat", "bird", "other"]
    record = run_retrieval(plan, num_workers=0, log=msgs.append)
    out = tmp_path / "out"
    assert "dog: 118 ImageNet classes" in (out / "label_map_review.txt").read_text()
    assert any("label map built from the class names" in m for m in msgs)  # shown for review
    lm = json.loads((out / "label_map.json").read_text())
    assert lm["dog"] == list(range(151, 269)) and len(lm["other"]) == 1000 - 118 - 7 - 59
    assert load_head(out / "head").num_classes == 4 and record["score"] == "label-map probability"
    rows = _rows(out / "manifest.csv")
    assert record["counts"]["other"] == 3 and all(0 <= float(r["score"]) <= 1 for r in rows)
    others = [r for r in rows if r["class"] == "other"]
    assert all(float(r["score"]) < 0.5 and r["why"].startswith("other: best score") for r in others)
    splits = build_splits(DataConfig(dataset="manifest", root=str(out / "manifest.csv"), val_fraction=0.0))
    assert splits.classes[-1] == "other" and splits.size("train") == record["kept"]
    with pytest.raises(ConfigError, match="search=faiss searches image embeddings with text embeddings"):
        plan_retrieval(tmp_path / "p.txt", pool / "pool", timm_teacher, RetrieveConfig(search="faiss"),
                       tmp_path / "o2", tmp_path / "cache")


def test_retrieve_settings_and_text_head_other_are_refused(pool):
    from edgedistill.retrieve import plan_retrieval

    with pytest.raises(ConfigError, match="retrieve.other needs a score below which"):
        RetrieveConfig(other=5)
    with pytest.raises(ConfigError, match="retrieve.candidates=3 is invalid; it must be >= top_k"):
        RetrieveConfig(top_k=5, candidates=3)
    with pytest.raises(ConfigError, match="retrieve.search='knn' is invalid; valid: auto, exact, faiss"):
        RetrieveConfig(search="knn")
    with pytest.raises(ConfigError, match="'other' class the text head cannot score"):
        plan_retrieval(pool / "prompts.txt", pool / "pool", tiny_teacher_cfg(),
                       RetrieveConfig(other=2, min_score=0.1, templates="simple"), pool / "x", pool / "cache")


def test_retrieve_command_mistakes_are_one_line(pool, capsys):
    from edgedistill.cli import main

    assert main(["retrieve", "no/such.txt", str(pool / "pool")]) == 2
    assert capsys.readouterr().err.strip() == ("error: Prompts file 'no/such.txt' does not exist; write one class per "
                                               "line, e.g. 'cat: kitten'")
    assert main(["retrieve", str(pool / "prompts.txt"), str(pool / "nope")]) == 2
    assert "Pool path" in capsys.readouterr().err
    assert main(["retrieve", str(pool / "prompts.txt"), str(pool / "pool"), "--retrieve.examples", "no/such"]) == 2
    assert capsys.readouterr().err.strip() == ("error: retrieve.examples='no/such' is not a folder; give one holding "
                                               "<class>/*.jpg, a few example images per prompts class")
    assert main(["retrieve", str(pool / "prompts.txt"), str(pool / "pool"), "--retrieve.rerank", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: retrieve.rerank=-1 is invalid; it must be >= 0 (0: no re-ranking)"


# ----------------------------------------------------------------------------- distill --prompts --pool


def _distill_cfg(root: Path, **over) -> DistillConfig:
    raw = {
        "name": "zero", "out": str(root / "out"), "cache_dir": str(root / "cache"),
        "prompts": str(root / "prompts.txt"), "pool": str(root / "pool"), "held_out": str(root / "held"),
        "data": {"val_fraction": 0.2},
        "teacher": {"kind": "openclip", "model": TINY, "pretrained": "random", "device": "cpu", "batch_size": 16},
        "heads": {"templates": "simple"},
        "retrieve": {"top_k": 8, "dedup": None},
        "train": {"student": "test_resnet", "image_size": 16, "epochs": 1, "batch_size": 8, "num_workers": 0,
                  "lr": 0.05, "warmup_epochs": 0.5},
        "students": [{"name": "emb", "train": {"target": "embedding", "head": "text", "feature_loss": "cosine"}}],
        "deploy": {"int8": False, "batch_sizes": [2], "warmup": 0, "iters": 2, "tutorial_teacher": None},
    }
    raw.update(over)
    return from_dict(DistillConfig, raw, "test")


def _held_out(root: Path) -> None:
    rng = np.random.default_rng(1)
    for c, col in COLOURS.items():
        (root / "held" / c).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(np.clip(np.array(col) + rng.integers(-30, 30, (20, 24, 3)), 0, 255).astype(np.uint8)).save(
                root / "held" / c / f"{k}.png")


def test_distill_prompts_plan_refuses_before_any_work(tmp_path):
    from edgedistill.pipelines.distill import plan_distill, run_distill

    write_pool(tmp_path / "pool", per_class=2, noise=1, shard=1)
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    _held_out(tmp_path)
    with pytest.raises(ConfigError, match="both: --prompts FILE and --pool DIR"):
        DistillConfig(prompts="p.txt")
    with pytest.raises(ConfigError, match="distill.held_out='h' is invalid; it scores a zero-label run"):
        DistillConfig(held_out="h")
    for over, match in (({"data": {"root": "x"}}, "data.root='x' is not used with --prompts/--pool"),
                        ({"students": [{"name": "kd", "train": {"target": "logits", "head": "linear"}}]},
                         "Student 'kd' distils the 'linear' head, but a zero-label run has only")):
        with pytest.raises(ConfigError, match=match):
            plan_distill(_distill_cfg(tmp_path, **over))
        with pytest.raises(ConfigError, match=match):  # the run refuses before any work: no cache, no output
            run_distill(_distill_cfg(tmp_path, **over))
        assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()
    plan = plan_distill(_distill_cfg(tmp_path, students=DistillConfig().students))  # the defaults: zero-label students
    assert [r.name for r in plan.grid.runs] == ["kd_zero_shot", "kd_embedding"] and plan.heads == ["text"]
    assert plan.data.dataset == "manifest" and not plan.has_labels and plan.has_test
    assert any(n.startswith("No labels") for n in plan.notes)
    assert plan.grid.defaults.train["head_path"].endswith("retrieve/head")


@pytest.mark.slow
def test_distill_prompts_pool_end_to_end_and_predict_new_prompts(tmp_path, capsys):
    from edgedistill.deploy.predict import load_classifier, predict_images
    from edgedistill.pipelines.distill import run_distill

    write_pool(tmp_path / "pool", per_class=6, noise=3, shard=2)
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    _held_out(tmp_path)
    r = run_distill(_distill_cfg(tmp_path)).to_dict()
    out = tmp_path / "out"
    for name in ("report.md", "results.json", "retrieve/manifest.csv", "retrieve/contact_sheet.png",
                 "exports/student/model.onnx", "runs/emb/student.safetensors"):
        assert (out / name).is_file(), name
    rows = _rows(out / "retrieve" / "manifest.csv")
    assert r["retrieval"]["kept"] == len(rows) and r["retrieval"]["classes"] == ["red", "green", "blue"]
    assert r["data"]["dataset"] == "manifest" and r["data"]["train_labels"] is False
    assert r["data"]["counts"]["train"] + r["data"]["counts"].get("val", 0) == len(rows)
    assert r["evaluation"]["n"] == 6 and r["students"][0]["target"] == "embedding"
    assert set(r["teacher"]["heads"]) == {"text"}
    report = (out / "report.md").read_text()
    assert "## Retrieval (no labels)" in report and "No label was used to choose or to train any model" in report
    assert report.index("## Retrieval") < report.index("## Accuracy") and "retrieve/contact_sheet.png" in report
    assert any(n.startswith("No labels") for n in r["notes"])

    # The deployed embedding student takes class names it was never trained on.
    clf = load_classifier(out / "exports" / "student", ["a purple thing", "an orange thing", "a grey thing", "sky"])
    assert clf.labels == ["a purple thing", "an orange thing", "a grey thing", "sky"]
    preds, errors = predict_images(clf, sorted((tmp_path / "held").rglob("*.png")), top_k=2, show_progress=False)
    assert not errors and len(preds) == 6 and all(len(p["top"]) == 2 for p in preds)
    # The answer for each image is determined by the scores, whatever order or subset of prompts is asked:
    # the same top label with the prompts reversed, and again when only it and one other prompt are offered.
    top = {p["path"]: p["top"][0]["label"] for p in preds}
    rev, _ = predict_images(load_classifier(out / "exports" / "student", clf.labels[::-1]),
                            [Path(p) for p in top], top_k=1, show_progress=False)
    assert {p["path"]: p["top"][0]["label"] for p in rev} == top
    for path, label in top.items():
        rival = next(lab for lab in clf.labels if lab != label)
        for pair in ([label, rival], [rival, label]):
            (pred,), _ = predict_images(load_classifier(out / "exports" / "student", pair), [Path(path)], top_k=1,
                                        show_progress=False)
            assert pred["top"][0]["label"] == label, (path, pair)
    probs = clf.score(np.zeros((1, 3, clf.view.image_size, clf.view.image_size), np.float32))
    assert probs.shape == (1, 4) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    from edgedistill.cli import main

    capsys.readouterr()
    assert main(["predict", str(out / "exports" / "student"), str(tmp_path / "held"), "--top_k", "1",
                 "--prompts", "[a fox, a wolf]"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    fox_wolf, _ = predict_images(load_classifier(out / "exports" / "student", ["a fox", "a wolf"]),
                                 sorted((tmp_path / "held").rglob("*.png")), top_k=1, show_progress=False)
    want = {p["path"]: p["top"][0]["label"] for p in fox_wolf}
    assert len(lines) == 6 and {line.rsplit(": ", 1)[0]: line.rsplit(": ", 1)[1].split(" 0.")[0] for line in lines} == want
    assert main(["predict", str(out / "exports" / "student"), str(tmp_path / "held"), "--top_k", "1",
                 "--prompts", "[a wolf, a fox]"]) == 0  # the other order: the same answer per image
    lines = capsys.readouterr().out.strip().splitlines()
    assert {line.rsplit(": ", 1)[0]: line.rsplit(": ", 1)[1].split(" 0.")[0] for line in lines} == want

    # A rerun reuses the retrieval and the trained student.
    stamp = (out / "runs" / "emb" / "student.safetensors").stat().st_mtime_ns
    run_distill(_distill_cfg(tmp_path))
    assert (out / "runs" / "emb" / "student.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="holds students trained on another retrieval"):
        run_distill(_distill_cfg(tmp_path, retrieve={"top_k": 3, "dedup": None}))
