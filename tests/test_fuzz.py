"""Property-based tests (hypothesis) of what users hand us: folder layouts and file names, images of every mode
Pillow writes, YAML configs, and retrieval manifests. Nothing may end in a traceback: each case is read (and its
images decoded), skipped with a count, or refused in one line (an ``EdgeDistillError``; on the CLI, exit status 2
and one ``error:`` line).

Example counts are small (``max_examples`` 20-40, no deadline): the whole file runs in seconds, and a new seed is
drawn each run, so the cases covered widen over time.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import TINY
from edgedistill.cli import main
from edgedistill.config import DataConfig
from edgedistill.errors import EdgeDistillError

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)


def _one_line(e: BaseException, names: tuple = ()) -> str:
    """A refusal's message: one line, but for line breaks inside the user's own names (the CLI escapes those)."""
    text = str(e)
    for name in names:
        text = text.replace(os.fsdecode(name), "NAME")
    assert text and "\n" not in text.strip() and "Traceback" not in text, repr(text)
    return text


def _names(files: dict, top: bytes) -> tuple:
    return tuple(sorted({top, *files, *(stem + suffix for v in files.values() for stem, suffix, _ in v)}, key=len,
                        reverse=True))


def _fresh(tmp_path_factory, name: str) -> Path:
    return tmp_path_factory.mktemp(name)


# ----------------------------------------------------------------------------- folder layouts and file names

# Any bytes Linux allows in a name: all but b"/" and b"\0", up to 255 bytes, not "." or "..".
NAME = st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))
LONG_NAME = st.integers(200, 250).map(lambda n: b"x" * n)  # with a suffix of up to 5 bytes: at the 255-byte limit
SUFFIX = st.sampled_from([b".png", b".PNG", b".jpg", b".jpeg", b".txt", b""])


@st.composite
def layouts(draw):
    """``{class name: [(file name, kind)]}`` plus links: kind is 'image', 'broken' (not decodable) or 'empty'."""
    classes = draw(st.lists(st.one_of(NAME, st.just(b"with space"), st.just("caf\u00e9".encode())), min_size=1,
                            max_size=4, unique_by=lambda b: b.lower()))
    files = {c: draw(st.lists(st.tuples(st.one_of(NAME, LONG_NAME), SUFFIX,
                                        st.sampled_from(["image", "image", "image", "broken", "empty"])),
                              max_size=4, unique_by=lambda t: t[0] + t[1]))
             for c in classes}
    links = draw(st.lists(st.tuples(st.sampled_from(classes), st.sampled_from(["up", "loop", "dangling", "file", "other"])),
                          max_size=3))
    top = draw(st.one_of(st.just(b"data"), NAME))  # the dataset folder's own name, too
    return files, links, top


def _write_layout(root: Path, files: dict, links: list) -> int:
    """Write the layout under ``root`` (as bytes paths); returns how many decodable images with an image suffix
    the class folders hold directly (not through links, not hidden)."""
    broot = os.fsencode(root)
    os.makedirs(broot, exist_ok=True)
    good = 0
    rng = np.random.default_rng(0)
    for c, entries in files.items():
        cdir = os.path.join(broot, c)
        os.makedirs(cdir, exist_ok=True)
        for stem, suffix, kind in entries:
            path = os.path.join(cdir, stem + suffix)
            if os.path.lexists(path):
                continue
            if kind == "image":
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(
                    buf, format="JPEG" if suffix.lower() in (b".jpg", b".jpeg") else "PNG")
                data = buf.getvalue()
            else:
                data = b"" if kind == "empty" else b"not an image at all"
            with open(path, "wb") as f:
                f.write(data)
            named = os.fsdecode(stem + suffix)
            if kind == "image" and suffix.lower() in (b".png", b".jpg", b".jpeg") and not named.startswith("."):
                good += 1
    for k, (c, kind) in enumerate(links):
        link = os.path.join(broot, c, b"link%d" % k + (b".png" if kind in ("dangling", "file") else b""))
        target = {"up": b"..", "loop": b".", "dangling": b"nowhere.png", "file": b"/etc/hostname",
                  "other": os.path.join(broot, next(iter(files)))}[kind]
        if not os.path.lexists(link):
            os.symlink(target, link)
    return good


@FUZZ
@given(layout=layouts())
@example(layout=({b"\x80": [(b"\n", b".png", "broken"), (b"a b", b".jpg", "image")]}, [(b"\x80", "up")], b"\xff"))
def test_any_folder_layout_is_read_skipped_or_refused(tmp_path_factory, layout):
    from edgedistill.data.images import BadImageError
    from edgedistill.data.splits import build_splits

    files, links, top = layout
    root = Path(os.fsdecode(os.path.join(os.fsencode(_fresh(tmp_path_factory, "layout")), top)))
    good = _write_layout(root, files, links)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            splits = build_splits(DataConfig(dataset="imagefolder", root=str(root), val_fraction=0.0))
    except EdgeDistillError as e:
        _one_line(e, _names(files, top))
        return
    (src,) = splits.sources.values()
    assert len(src) >= good  # every decodable image directly in a class folder is listed (links may add more)
    assert sorted(src.classes) == sorted(os.fsdecode(c) for c in files)
    decoded = 0
    for i in range(len(src)):
        try:
            img = src.load(i)
        except BadImageError as e:  # skipped by the jobs, and counted
            _one_line(e, _names(files, top))
            continue
        assert img.mode == "RGB" and img.size[0] > 0
        decoded += 1
    assert decoded >= good
    # the split manifest (JSON, written atomically) holds every name, whatever bytes it has
    from edgedistill import storage

    storage.write_json(root / "splits.json", splits.manifest)
    assert storage.read_json(root / "splits.json")["counts"] == splits.manifest["counts"]


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(layout=layouts())
@example(layout=({b"\x80": [(b"x" * 250, b".jpeg", "image")]}, [], b"data"))  # a non-UTF-8 name in the printed table
@example(layout=({b"c": []}, [], b"\x80"))  # ... and in the error line
@example(layout=({b"c": []}, [], b"two\nlines"))  # a newline in a name: the error is still one line
def test_any_folder_layout_through_the_cache_command(tmp_path_factory, capsys, layout):
    """The CLI on the same layouts, with the tiny teacher: exit 0 (a cache of every readable image), or exit 2 and
    one line."""
    files, links, top = layout
    root = Path(os.fsdecode(os.path.join(os.fsencode(_fresh(tmp_path_factory, "cli-layout")), top)))
    _write_layout(root, files, links)
    capsys.readouterr()
    code = main(["cache", "--data.dataset", "imagefolder", "--data.root", str(root), "--data.val_fraction", "0",
                 "--split", "train", "--teacher.kind", "openclip", "--teacher.model", TINY, "--teacher.pretrained",
                 "random", "--teacher.device", "cpu", "--cache_dir", str(root / ".cache"), "--num_workers", "0"])
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    if code == 0:
        assert "error:" not in stderr, stderr
    else:  # the error is the last thing written, and one line
        assert code == 2 and stderr.count("error:") == 1, stderr
        assert "\n" not in stderr[stderr.index("error:"):].strip(), stderr


# ----------------------------------------------------------------------------- every image mode Pillow writes

MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "F"]
FORMATS = ["PNG", "JPEG", "TIFF", "BMP", "WEBP", "GIF", "PPM"]


def _image(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    if mode in ("I", "I;16", "I;16B", "F"):
        hi = {"I": 2**31 - 1, "F": 1, "I;16": 65535, "I;16B": 65535}[mode]
        arr = rng.random((h, w)) * hi
        base = Image.fromarray(arr.astype(np.float32) if mode == "F" else arr.astype(np.int32), "F" if mode == "F" else "I")
        return base if mode in ("I", "F") else base.convert(mode) if mode == "I;16" else Image.frombytes(
            mode, size, arr.astype(">u2").tobytes())
    return Image.frombytes("RGBX" if mode == "RGBX" else mode, size, rng.integers(0, 256, len(Image.new(mode, size).tobytes()),
                                                                                       dtype=np.uint8).tobytes())


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """An exported tiny student (ONNX), loaded as the deploy runtime loads it."""
    import torch

    from edgedistill import storage
    from edgedistill.deploy import export as ex
    from edgedistill.deploy.predict import load_classifier
    from edgedistill.students import create_student

    d = tmp_path_factory.mktemp("fuzz-model")
    torch.manual_seed(0)
    storage.save_safetensors(d / "run" / "student.safetensors", create_student("test_resnet", 2).state_dict())
    storage.write_json(d / "run" / "student.json", {
        "arch": "test_resnet", "num_outputs": 2, "target": "labels", "class_names": ["a", "b"],
        "view": {"image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}})
    model, meta = ex.load_student_deploy(d / "run")
    ex.export_model(model, meta, d / "exp")
    return load_classifier(d / "exp" / "model.onnx")


@FUZZ
@given(mode=st.sampled_from(MODES), fmt=st.sampled_from(FORMATS),
       size=st.tuples(st.integers(1, 40), st.integers(1, 40)), seed=st.integers(0, 3))
def test_every_image_mode_is_decoded_or_skipped(tmp_path_factory, classifier, mode, fmt, size, seed):
    """An image of any mode and format is decoded to RGB for training (the teacher's and the student's view) and
    for predict, or, where it cannot be, reported as one unreadable file: never a traceback."""
    from edgedistill.data import eval_transform
    from edgedistill.data.images import BadImageError, decode_image
    from edgedistill.data.views import ViewSpec
    from edgedistill.deploy.predict import predict_images

    try:
        img = _image(mode, size, seed)
        buf = io.BytesIO()
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError, TypeError):
        assume(False)  # Pillow cannot write this mode in this format: not a file a user can have
    root = _fresh(tmp_path_factory, "modes")
    path = root / f"img.{fmt.lower()}"
    path.write_bytes(buf.getvalue())
    try:
        rgb = decode_image(path)
    except BadImageError as e:
        _one_line(e)
        rgb = None
    if rgb is not None:
        assert rgb.mode == "RGB" and rgb.size == Image.open(path).size
        x = eval_transform(ViewSpec(16, (0.5,) * 3, (0.25,) * 3))(rgb)
        assert tuple(x.shape) == (3, 16, 16) and bool(x.isfinite().all())
    preds, errors = predict_images(classifier, [path], top_k=1, show_progress=False)
    assert len(preds) + len(errors) == 1 and (rgb is None) == bool(errors)
    if preds:
        assert preds[0]["top"][0]["label"] in ("a", "b") and np.isfinite(preds[0]["top"][0]["probability"])


# ----------------------------------------------------------------------------- YAML configs

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.just("auto"))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def _tiny_distill(root: Path) -> dict:
    return {
        "name": "fuzz", "out": str(root / "out"), "cache_dir": str(root / "cache"),
        "data": {"dataset": "imagefolder", "root": str(root / "data"), "val_fraction": 0.3},
        "teacher": {"kind": "openclip", "model": TINY, "pretrained": "random", "device": "cpu", "batch_size": 16},
        "heads": {"zero_shot": "text", "templates": "simple"},
        "train": {"student": "test_resnet", "image_size": 16, "epochs": 1, "batch_size": 8, "num_workers": 0},
        "students": [{"name": "kd", "train": {"target": "logits", "head": "text"}}],
        "deploy": {"int8": False, "batch_sizes": [1], "warmup": 0, "iters": 2, "tutorial_teacher": None},
    }


def _paths(d: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for k, v in d.items():
        out.append(prefix + (k,))
        if isinstance(v, dict):
            out += _paths(v, prefix + (k,))
    return out


@st.composite
def mutated_configs(draw):
    """The tiny distill config with 1-3 values replaced by any YAML value, and maybe an unknown key added."""
    base = _tiny_distill(Path("/nonexistent"))
    paths = _paths(base)
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True)):
        d = base
        for k in path[:-1]:
            if not isinstance(d.get(k), dict):
                break
            d = d[k]
        else:
            d[path[-1]] = draw(VALUES)
    if draw(st.booleans()):
        where = draw(st.sampled_from([()] + [p for p in paths if isinstance(_get(base, p), dict)]))
        d = _get(base, where) if where else base
        if isinstance(d, dict):
            d[draw(st.sampled_from(["epochz", "unknown", "Teacher", "data_root", "lr "]))] = draw(SCALARS)
    return base


def _get(d, path):
    for k in path:
        d = d.get(k) if isinstance(d, dict) else None
    return d


@pytest.fixture(scope="module")
def distill_root(tmp_path_factory):
    from test_distill import write_user_folder

    root = tmp_path_factory.mktemp("fuzz-distill")
    write_user_folder(root / "data", n_train=4, n_test=2, n_unlabeled=0)
    return root


def _with(**over) -> dict:
    raw = _tiny_distill(Path("/nonexistent"))
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            raw[section][field] = value
        else:
            raw[section] = value
    return raw


@FUZZ
@given(raw=mutated_configs())
@example(raw=_with(train__epochs=None))  # a null where an int is due: jsonargparse lets it through from a file
@example(raw=_with(data=None))
@example(raw=_with(heads=[]))  # a section that is not a mapping
@example(raw=_with(out=None))
@example(raw=_with(train__student=None))  # no student named: the planner's ladder, and only its notes on stderr
def test_any_yaml_config_is_planned_or_refused_in_one_line(distill_root, capsys, monkeypatch, raw):
    """``distill --config FILE.yaml`` with wrong types and unknown keys: the plan (everything checked before any
    work) succeeds, or the CLI exits 2 with one line. The work itself is replaced by the plan here."""
    from test_planner import FakeMeasurements
    from test_planner import _table as planner_table

    from edgedistill.pipelines import distill, planner

    text = yaml.safe_dump(raw).replace("/nonexistent", str(distill_root))
    path = distill_root / "fuzz.yaml"
    path.write_text(text)
    monkeypatch.setattr(distill, "run_distill", lambda cfg, **kw: distill.plan_distill(cfg))
    # a config naming no student is planned on a ladder: measured here by fixed numbers, not seconds of races each
    table = {**{c.name: planner_table()[next(iter(planner_table()))] for c in planner.ladder(False)}, **planner_table()}
    monkeypatch.setattr(planner, "Measurements", lambda *a, **k: FakeMeasurements(table))
    capsys.readouterr()
    code = main(["distill", "--config", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert (code == 0 and not err) or (code == 2 and len(err) == 1 and err[0].startswith("error:")), (code, err, text)


@FUZZ
@given(raw=mutated_configs())
def test_any_config_dict_is_loaded_or_refused_in_one_line(raw):
    """The library's reader of YAML configs (grids, the demo recipe) behaves as the CLI: a config or one line."""
    from edgedistill.config import DistillConfig, from_dict

    try:
        from_dict(DistillConfig, raw, "fuzz.yaml")
    except EdgeDistillError as e:
        _one_line(e)


# ----------------------------------------------------------------------------- retrieval manifests


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """A real manifest (``edgedistill retrieve`` with the tiny teacher) and its rows."""
    from test_retrieve import PROMPTS, write_pool

    root = tmp_path_factory.mktemp("fuzz-manifest")
    write_pool(root / "pool", per_class=2, noise=1, shard=2)
    (root / "prompts.txt").write_text(PROMPTS)
    assert main(["retrieve", str(root / "prompts.txt"), str(root / "pool"), "--out", str(root / "r"),
                 "--cache_dir", str(root / "cache"), "--num_workers", "0", "--teacher.kind", "openclip",
                 "--teacher.model", TINY, "--teacher.pretrained", "random", "--teacher.device", "cpu",
                 "--retrieve.top_k", "3", "--retrieve.dedup", "null", "--retrieve.templates", "simple"]) == 0
    path = root / "r" / "manifest.csv"
    rows = list(csv.reader(io.StringIO(path.read_text())))
    return path, rows


CELL = st.one_of(st.text(max_size=10), st.integers(-5, 50).map(str), st.just(""), st.just("red"), st.just("0"))


@st.composite
def edited_manifests(draw, rows):
    header, body = rows[0], rows[1:]
    keep = draw(st.lists(st.sampled_from(range(len(header))), unique=True, max_size=len(header) + 1))
    extra = draw(st.lists(st.sampled_from(["note", "label", "path2"]), max_size=2, unique=True))
    out_rows = [[header[i] for i in keep] + extra]
    picked = draw(st.lists(st.sampled_from(range(len(body))), max_size=len(body) + 2))  # deleted, repeated, reordered
    for r in picked:
        row = [body[r][i] for i in keep] + [draw(CELL) for _ in extra]
        if row and draw(st.integers(0, 3)) == 0:
            row[draw(st.integers(0, len(row) - 1))] = draw(CELL)
        if draw(st.integers(0, 7)) == 0:
            row = row[:draw(st.integers(0, len(row)))]  # a short line
        out_rows.append(row)
    return out_rows


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_edited_manifest_is_read_or_refused_in_one_line(manifest, tmp_path_factory, data):
    """A manifest with columns missing, added or reordered, rows deleted, repeated or edited: read as labelled
    data (only rows that name their image), or one line naming the problem."""
    import shutil

    from edgedistill.data.splits import build_splits

    path, rows = manifest
    edited = data.draw(edited_manifests(rows))
    d = _fresh(tmp_path_factory, "manifest")
    shutil.copy(path.with_name("retrieval.json"), d / "retrieval.json")
    buf = io.StringIO()
    csv.writer(buf).writerows(edited)
    (d / "manifest.csv").write_text(buf.getvalue())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            splits = build_splits(DataConfig(dataset="manifest", root=str(d / "manifest.csv"), val_fraction=0.0))
    except EdgeDistillError as e:
        _one_line(e)
        return
    labelled = sum(int((s.labels >= 0).sum()) for s in splits.sources.values())
    assert labelled == sum(1 for row in edited[1:] if row)  # every row names one image, once (blank lines skipped)


def test_manifest_with_a_short_line_is_one_line(manifest, tmp_path):
    """The case the fuzzing found: a line with fewer fields than the header (csv fills them with None)."""
    import shutil

    from edgedistill.data.splits import build_splits

    path, rows = manifest
    shutil.copy(path.with_name("retrieval.json"), tmp_path / "retrieval.json")
    (tmp_path / "manifest.csv").write_text(",".join(rows[0]) + "\n" + ",".join(rows[1][:3]) + "\n")
    with pytest.raises(EdgeDistillError, match=r"manifest.csv:2: the line has 3 fields where the header has 8") as e:
        build_splits(DataConfig(dataset="manifest", root=str(tmp_path / "manifest.csv")))
    _one_line(e.value)
