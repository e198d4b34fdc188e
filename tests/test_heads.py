"""Heads: golden values for text and label-map heads, probe selection on val, save/load round trips."""

from __future__ import annotations

import json
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from timm.data import ImageNetInfo

from conftest import tiny_teacher_cfg
from edgedistill.errors import ConfigError, EdgeDistillError
from edgedistill.heads import (
    DEFAULT_LABEL_MAPS,
    HEADS,
    LabelMapHead,
    LinearProbe,
    TextHead,
    build_head,
    build_text_head,
    default_label_map,
    load_head,
    load_label_map,
    save_head,
    train_linear_probe,
)
from edgedistill.teachers import create_teacher

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL10 = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
D = 32  # the tiny teacher's embedding width


@pytest.fixture(scope="module")
def tiny_clip():
    return create_teacher(tiny_teacher_cfg())


def test_text_head_is_scaled_cosine():
    head = TextHead(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), logit_scale=100.0)
    logits = head(torch.tensor([[3.0, 4.0], [-2.0, 0.0]]))
    torch.testing.assert_close(logits, torch.tensor([[60.0, 80.0], [-100.0, 0.0]]))


def test_build_text_head_tutorial_and_ensemble(tiny_clip):
    head = build_text_head(tiny_clip, ["cat", "airplane"], templates="tutorial")
    expected = F.normalize(tiny_clip.encode_text(["a cat", "an airplane"]), dim=-1)
    torch.testing.assert_close(head.text_embeddings, expected, atol=1e-5, rtol=1e-5)
    assert head.logit_scale == pytest.approx(tiny_clip.logit_scale)

    ens = build_text_head(tiny_clip, ["cat", "sports_car"], templates="ensemble")
    n = len(open_clip.OPENAI_IMAGENET_TEMPLATES)
    prompts = [t("sports car") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    manual = F.normalize(F.normalize(tiny_clip.encode_text(prompts), dim=-1).mean(0), dim=-1)
    assert n == 80 and ens.text_embeddings.shape == (2, D)
    torch.testing.assert_close(ens.text_embeddings[1], manual, atol=1e-5, rtol=1e-5)
    emb = torch.randn(4, D, requires_grad=True)
    ens(emb).sum().backward()  # usable on a student's output
    assert emb.grad is not None
    with pytest.raises(ConfigError, match="bogus"):
        build_text_head(tiny_clip, ["cat"], templates="bogus")


def test_build_text_head_needs_text_teacher():
    class NoText:
        name, has_text = "tf_efficientnet_lite0", False

    with pytest.raises(EdgeDistillError, match="no text encoder"):
        build_text_head(NoText(), ["cat"])


def test_label_map_head_sums_probabilities():
    head = LabelMapHead([[0, 1], [2]], num_teacher_classes=3)
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0], [6.0, 3.0, 1.0]])) + 5.0  # probs [1,2,3]/6 and [6,3,1]/10
    out = head(logits)
    torch.testing.assert_close(out.exp(), torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    with pytest.raises(ConfigError, match="1000"):
        LabelMapHead([[1000]])


@pytest.mark.parametrize("name,classes", [("cifar10", CIFAR10), ("stl10", STL10)])
def test_shipped_label_maps(name, classes):
    head = load_label_map(name, list(reversed(classes)))  # order follows class_names, not the file
    groups = dict(zip(reversed(classes), head.groups))
    flat = [i for g in head.groups for i in g]
    assert len(flat) == len(set(flat)), "a teacher class may vote for one target class only"
    desc = ImageNetInfo().index_to_description
    assert groups["cat"] == [281, 282, 283, 284, 285]
    assert all("cat" in desc(i) for i in groups["cat"])
    assert desc(groups["dog"][0]) == "Chihuahua" and len(groups["dog"]) == 118
    assert {"airliner", "warplane, military plane"} <= {desc(i) for i in groups["airplane"]}
    assert {"impala, Aepyceros melampus", "gazelle"} <= {desc(i) for i in groups["deer"]}
    assert "sorrel" in {desc(i) for i in groups["horse"]}
    assert "container ship, containership, container vessel" in {desc(i) for i in groups["ship"]}
    assert "fire engine, fire truck" in {desc(i) for i in groups["truck"]}
    car = groups["automobile" if name == "cifar10" else "car"]
    assert {"sports car, sport car", "convertible", "cab, hack, taxi, taxicab"} <= {desc(i) for i in car}
    if name == "stl10":
        assert all(369 <= i <= 384 for i in groups["monkey"]) and "baboon" in {desc(i) for i in groups["monkey"]}


def test_label_map_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"\['monkey'\]"):
        load_label_map("cifar10", ["cat", "monkey"])
    with pytest.raises(ConfigError, match="cifar10, stl10"):
        load_label_map("imagenet21k", ["cat"])
    p = tmp_path / "mine.json"
    p.write_text(json.dumps({"Pet_Cat": [281], "dog": [151, 152]}))
    assert load_label_map(str(p), ["pet cat", "dog"]).groups == [[281], [151, 152]]


def _blobs(n_per_class: int, seed: int, dim: int = 16, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(dim)[:classes] * 4.0
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return centers[y] + torch.randn(len(y), dim, generator=g), y


def test_probe_learns_separable_data():
    x, y = _blobs(40, 0)
    vx, vy = _blobs(20, 1)
    tx, ty = _blobs(50, 2)
    probe, report = train_linear_probe(x.numpy(), y.numpy(), vx, vy, weight_decays=(0.0, 1e-3), epochs=50, seed=0)
    acc = (probe(tx).argmax(1) == ty).float().mean().item()
    assert acc > 0.95 and report["val_acc"] > 0.95
    assert report["weight_decay"] in (0.0, 1e-3) and len(report["sweep"]) == 2 and report["selected_on"] == "val loss"


def test_probe_weight_decay_chosen_on_val_not_train():
    # Train: 70% class 0, 30% class 1, separable. Val: points that look like class 1 but are labelled 0.
    # wd=0 fits train perfectly and gets val 0%; a huge wd shrinks W to ~0, leaving the bias (the
    # class prior, not decayed), so it predicts class 0 everywhere: val 100%, train 70%.
    x, y = _blobs(10, 0, classes=2)
    x, y = torch.cat([x[:10], x[:10] + 0.01, x[:4], x[10:]]), torch.cat([y[:10], y[:10], y[:4], y[10:]])
    vx = _blobs(10, 1, classes=2)[0][10:]
    vy = torch.zeros(10, dtype=torch.long)
    probe, report = train_linear_probe(x, y, vx, vy, weight_decays=(0.0, 1e3), epochs=50)
    sweep = {row["weight_decay"]: row for row in report["sweep"]}
    assert sweep[0.0]["train_acc"] > sweep[1e3]["train_acc"]
    assert report["weight_decay"] == 1e3 and report["val_acc"] == 1.0
    # The same holds when selecting on validation accuracy.
    _, by_acc = train_linear_probe(x, y, vx, vy, weight_decays=(0.0, 1e3), epochs=50, select_on="acc")
    assert by_acc["weight_decay"] == 1e3 and by_acc["selected_on"] == "val acc"


def test_probe_selection_on_loss_prefers_calibrated_probabilities():
    # A strong weight decay flattens the probabilities: here it classifies one more validation
    # point correctly but at a far higher cross-entropy. Loss selection keeps the sharper fit
    # (what response KD wants to distil); accuracy selection takes the flat one.
    x, y = _blobs(40, 0)
    vx, vy = _blobs(20, 1)
    _, by_loss = train_linear_probe(x, y, vx, vy, weight_decays=(0.0, 0.1), epochs=50)
    sweep = {row["weight_decay"]: row for row in by_loss["sweep"]}
    assert sweep[0.0]["val_loss"] < sweep[0.1]["val_loss"] and sweep[0.0]["val_acc"] < sweep[0.1]["val_acc"]
    assert by_loss["weight_decay"] == 0.0
    _, by_acc = train_linear_probe(x, y, vx, vy, weight_decays=(0.0, 0.1), epochs=50, select_on="acc")
    assert by_acc["weight_decay"] == 0.1


def test_probe_rejects_bad_inputs():
    x, y = _blobs(5, 0)
    with pytest.raises(ConfigError, match="validation"):
        train_linear_probe(x, y, x[:0], y[:0])
    with pytest.raises(ConfigError, match="unlabeled"):
        train_linear_probe(x, torch.full_like(y, -1), x, y)


@pytest.mark.parametrize("kind", ["text", "label_map", "linear"])
def test_save_load_round_trip(kind, tmp_path):
    torch.manual_seed(0)
    if kind == "text":
        head, x = TextHead(torch.randn(5, 8), 42.0), torch.randn(3, 8)
    elif kind == "label_map":
        head, x = LabelMapHead([[0, 1], [2, 5, 7], [999]]), torch.randn(3, 1000)
    else:
        head, x = LinearProbe(8, 4, normalize=False), torch.randn(3, 8)
        torch.nn.init.normal_(head.linear.bias)
    path = save_head(head, tmp_path / "heads" / "h", {"teacher_fingerprint": "abc", "classes": ["a", "b"]})
    assert path.name == "h.safetensors" and (tmp_path / "heads" / "h.json").is_file()
    manifest = json.loads((tmp_path / "heads" / "h.json").read_text())
    assert manifest["kind"] == kind == head.kind and manifest["teacher_fingerprint"] == "abc"
    assert manifest["format"] == 1 and manifest["head"] == json.loads(json.dumps(head.arguments()))
    assert manifest["tensors"] == "h.safetensors" and manifest["classes"] == ["a", "b"]
    for p in (tmp_path / "heads" / "h", path, tmp_path / "heads" / "h.json"):
        loaded = load_head(p)
        assert type(loaded) is type(head) and loaded.num_classes == head.num_classes and not loaded.training
        assert loaded.arguments() == head.arguments()
        torch.testing.assert_close(loaded(x), head(x), atol=0, rtol=0)
    if kind == "linear":
        assert loaded.normalize is False
    save_head(head, tmp_path / "run" / "head")
    torch.testing.assert_close(load_head(tmp_path / "run")(x), head(x), atol=0, rtol=0)  # a run directory
    with pytest.raises(ConfigError, match="No saved head"):
        load_head(tmp_path / "nothing")


def test_label_map_accuracy_head_on_logits_is_log_prob():
    head = load_label_map("cifar10", CIFAR10)
    out = head(torch.randn(4, 1000))
    assert out.shape == (4, 10) and (out <= 0).all() and (out.exp().sum(1) <= 1 + 1e-5).all()
    assert not math.isnan(out.sum().item())


def test_heads_describe_themselves():
    text, lmap, probe = TextHead(torch.randn(5, 8), 42.0), LabelMapHead([[0, 1], [2]], 3), LinearProbe(8, 4, normalize=False)
    assert {h.kind: type(h) for h in (text, lmap, probe)} == {k: v for k, v in HEADS.items()}
    assert (text.num_classes, lmap.num_classes, probe.num_classes) == (5, 2, 4)
    assert text.arguments() == {"logit_scale": 42.0, "num_classes": 5}
    assert lmap.arguments() == {"groups": [[0, 1], [2]], "num_teacher_classes": 3}
    assert probe.arguments() == {"in_dim": 8, "num_classes": 4, "normalize": False}


def test_load_head_refuses_damaged_or_foreign_files(tmp_path):
    head = LinearProbe(8, 4)
    save_head(head, tmp_path / "h")
    meta = json.loads((tmp_path / "h.json").read_text())
    (tmp_path / "h.json").write_text(json.dumps({**meta, "kind": "resnet"}))
    with pytest.raises(ConfigError, match=r"is not a saved head \(kind 'resnet'; valid: text, label_map, linear\)"):
        load_head(tmp_path / "h")
    (tmp_path / "h.json").write_text(json.dumps({**meta, "head": {**meta["head"], "in_dim": 9}}))
    with pytest.raises(ConfigError, match="does not match its tensors"):
        load_head(tmp_path / "h")
    (tmp_path / "h.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "head"}))
    with pytest.raises(ConfigError, match="is not a saved head"):
        load_head(tmp_path / "h")
    (tmp_path / "h.safetensors").unlink()
    with pytest.raises(ConfigError, match="No saved head.*h.safetensors"):
        load_head(tmp_path / "h")
    with pytest.raises(ConfigError, match="Linear is not a registered head \(text, label_map, linear\)"):
        save_head(torch.nn.Linear(2, 2), tmp_path / "x")


def test_build_head_for_each_kind(tiny_clip, tmp_path):
    text = build_head("text", classes=["cat", "dog"], dataset="imagefolder", teacher=tiny_clip, templates="tutorial")
    assert isinstance(text, TextHead) and text.num_classes == 2 and not text.training
    torch.testing.assert_close(text.text_embeddings, build_text_head(tiny_clip, ["cat", "dog"], "tutorial").text_embeddings)
    assert not any(p.requires_grad for p in text.parameters())

    lmap = build_head("label_map", classes=STL10, dataset="stl10")
    assert isinstance(lmap, LabelMapHead) and lmap.groups == load_label_map("stl10", STL10).groups
    assert build_head("label_map", classes=CIFAR10, dataset="demo").groups == load_label_map("cifar10", CIFAR10).groups
    mine = tmp_path / "map.json"
    mine.write_text(json.dumps({"cat": [281], "dog": [151]}))
    assert build_head("label_map", classes=["dog", "cat"], dataset="imagefolder", label_map=str(mine)).groups == [[151], [281]]

    with pytest.raises(ConfigError, match="linear head needs a probe"):
        build_head("linear", classes=["cat", "dog"], dataset="imagefolder")
    save_head(LinearProbe(D, 2), tmp_path / "probe")
    probe = build_head("linear", classes=["cat", "dog"], dataset="imagefolder", saved=str(tmp_path / "probe"))
    assert isinstance(probe, LinearProbe) and probe.num_classes == 2
    with pytest.raises(ConfigError, match="holds a 'linear' head, not a 'text' head"):
        build_head("text", classes=["cat", "dog"], dataset="imagefolder", saved=str(tmp_path / "probe"))
    with pytest.raises(ConfigError, match="scores 2 classes but dataset 'imagefolder' has 3"):
        build_head("linear", classes=["cat", "dog", "ship"], dataset="imagefolder", saved=str(tmp_path / "probe"))
    with pytest.raises(ConfigError, match="Unknown head 'knn'"):
        build_head("knn", classes=["cat"], dataset="imagefolder")


def test_default_label_map():
    assert DEFAULT_LABEL_MAPS == {"cifar10": "cifar10", "demo": "cifar10", "stl10": "stl10"}
    assert default_label_map("stl10", STL10) == "stl10" and default_label_map("demo", CIFAR10) == "cifar10"
    # Another dataset uses the first shipped map that covers all its classes (case and '_' insensitive).
    assert default_label_map("imagefolder", ["Cat", "dog"]) == "cifar10"
    assert default_label_map("imagefolder", ["monkey", "car"]) == "stl10"
    with pytest.raises(ConfigError, match=r"No shipped label map covers the classes of dataset 'imagefolder' \(cat, sofa\)"):
        default_label_map("imagefolder", ["cat", "sofa"])
