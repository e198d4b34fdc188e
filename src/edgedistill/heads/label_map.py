"""Label-map head: an ImageNet classifier's probabilities summed over the ImageNet classes of each target class.

Maps ship as ``label_maps/<name>.json`` (``{class_name: [ImageNet indices]}``); a dataset
whose classes a shipped map covers uses it by default.

:func:`label_map_from_names` builds a map from class names alone, through the WordNet 3.0
hypernym DAG above the 1,000 ImageNet classes (``label_maps/imagenet_hierarchy.json``, written
by ``scripts/make_imagenet_hierarchy.py`` from Debian's ``wordnet-base``; it carries the
WordNet licence notice in its ``license`` field), and says why each ImageNet class was taken.
"""

from __future__ import annotations

import functools
import json
import re
from collections import deque
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedistill import storage
from edgedistill.errors import ConfigError
from edgedistill.prompts import WNID_PATTERN, normalise_name

DEFAULT_LABEL_MAPS = {"cifar10": "cifar10", "demo": "cifar10", "stl10": "stl10"}
"""Dataset -> its shipped label map (the one home of this fact)."""
HIERARCHY_FILE = "imagenet_hierarchy.json"
"""The WordNet hypernym DAG of the ImageNet-1k classes, beside the shipped maps (not a map itself)."""
OTHER = "other"
"""Name of the optional catch-all class (``retrieve.other``): every teacher class outside the target groups."""


class LabelMapHead(nn.Module):
    """Target class scores from ImageNet logits: ``log(sum of softmax probabilities over the class's group)``.

    Args:
        groups: For each of the C target classes, the teacher class indices it gathers.
        num_teacher_classes: Number of teacher classes (1000 for ImageNet-1k).
    """

    kind = "label_map"
    reads = "logits"
    needs_labels = False
    title = "ImageNet label map"
    source = "label map (a shipped name or a JSON path)"

    @classmethod
    def fits(cls, teacher: Any) -> bool:
        """Any classifier teacher (it has class logits)."""
        return bool(getattr(teacher, "num_classes", None))

    @classmethod
    def build(cls, ctx: Any) -> LabelMapHead:
        """``ctx.source`` (a label map name or JSON path), else the shipped map of ``ctx.dataset`` / covering the classes."""
        return load_label_map(ctx.source or default_label_map(ctx.dataset, ctx.classes), ctx.classes)

    def __init__(self, groups: list[list[int]], num_teacher_classes: int = 1000) -> None:
        super().__init__()
        if not groups or any(not g for g in groups):
            raise ConfigError("LabelMapHead needs a non-empty list of teacher classes for every target class")
        bad = sorted({i for g in groups for i in g if not 0 <= i < num_teacher_classes})
        if bad:
            raise ConfigError(f"Label map indices {bad} out of range [0, {num_teacher_classes})")
        self.groups = [sorted({int(i) for i in g}) for g in groups]
        self.num_teacher_classes = num_teacher_classes
        mask = torch.full((len(groups), num_teacher_classes), float("-inf"))
        for c, g in enumerate(self.groups):
            mask[c, g] = 0.0
        self.register_buffer("log_mask", mask)  # [C, K]: 0 inside the group, -inf outside

    @property
    def num_classes(self) -> int:
        return len(self.groups)

    def forward(self, teacher_logits: Tensor) -> Tensor:
        """``[B, K]`` teacher logits -> ``[B, C]`` log of summed group probabilities (not renormalised)."""
        logp = F.log_softmax(teacher_logits.float(), dim=-1)  # [B, K]
        return torch.logsumexp(logp[:, None, :] + self.log_mask[None], dim=-1)  # [B, C], stable sum of probs

    def arguments(self) -> dict[str, Any]:
        return {"groups": self.groups, "num_teacher_classes": self.num_teacher_classes}

    @classmethod
    def from_saved(cls, args: dict[str, Any], tensors: dict[str, Tensor]) -> LabelMapHead:
        return cls(args["groups"], args["num_teacher_classes"])


def _shipped() -> dict[str, Path]:
    folder = resources.files("edgedistill") / "label_maps"
    return {p.name[:-5]: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".json") and p.name != HIERARCHY_FILE}


def _key(s: str) -> str:
    return s.lower().replace("_", " ").strip()


def default_label_map(dataset: str, class_names: Sequence[str]) -> str:
    """The shipped map of ``dataset``, else the first shipped map covering every class name.

    Raises:
        ConfigError: no shipped map fits (the message says how to give one).
    """
    if dataset in DEFAULT_LABEL_MAPS:
        return DEFAULT_LABEL_MAPS[dataset]
    wanted = {_key(c) for c in class_names}
    for name, path in sorted(_shipped().items()):
        if wanted <= {_key(k) for k in json.loads(path.read_text(encoding="utf-8"))}:
            return name
    raise ConfigError(f"No shipped label map covers the classes of dataset {dataset!r} ({', '.join(class_names)}); "
                      f"pass a JSON file {{class: [ImageNet indices]}} as the label map (shipped: {', '.join(_shipped())})")


def load_label_map(name_or_path: str, class_names: Sequence[str]) -> LabelMapHead:
    """A LabelMapHead for ``class_names`` from a shipped map (``cifar10``, ``stl10``) or a JSON file.

    The JSON is ``{class_name: [teacher indices]}``; class names match case-insensitively with
    ``_``/space equivalent (STL10 "car" is not CIFAR's "automobile": pick the matching map).

    Raises:
        ConfigError: Unknown map name, or classes the map does not cover (named in the message).
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        mapping = storage.read_json(path)
    else:
        shipped = _shipped()
        if name_or_path not in shipped:
            raise ConfigError(f"Unknown label map {name_or_path!r}: not a file. Shipped maps: {', '.join(sorted(shipped))}")
        mapping = json.loads(shipped[name_or_path].read_text(encoding="utf-8"))
    if not isinstance(mapping, dict):
        raise ConfigError(f"Label map {name_or_path!r} must be a JSON object {{class: [ImageNet indices]}}")
    by_key = {_key(k): v for k, v in mapping.items()}
    missing = [c for c in class_names if _key(c) not in by_key]
    if missing:
        raise ConfigError(
            f"Label map {name_or_path!r} has no entry for classes {missing}. It covers: {', '.join(mapping)}"
        )
    return LabelMapHead([list(by_key[_key(c)]) for c in class_names])


def with_other(head: LabelMapHead) -> LabelMapHead:
    """``head`` plus a last class, ``other``: every teacher class in none of its groups (``p(other) = 1 - sum``).

    Raises:
        ConfigError: the groups already cover every teacher class.
    """
    used = {i for g in head.groups for i in g}
    rest = [i for i in range(head.num_teacher_classes) if i not in used]
    if not rest:
        raise ConfigError(f"The label map covers all {head.num_teacher_classes} teacher classes; no class is left for "
                          f"'{OTHER}'")
    return LabelMapHead(head.groups + [rest], head.num_teacher_classes)


# ----------------------------------------------------------------------------- label maps from names
#
# Matching rules, per target name and each of its synonyms (reasons are recorded for every match):
#  1. normalise (lower case, '-'/'_' as spaces), split on '/' ("T-shirt/top" -> "t shirt", "top"), try the
#     singular and plural of the last word;
#  2. own lemma: an ImageNet class with the term as a lemma (distance 0);
#  3. hypernym: a class with an ancestor synset that has the term as a lemma (distance = fewest steps up);
#  4. only senses <= max_sense of the term match (WordNet numbers a word's senses by frequency: "cat" is
#     'cat, true cat' (sense 1), not 'big cat, cat' (sense 7)); skipped senses are reported with what they
#     would add. A synonym that is a WordNet id (n04530566) pins that synset whatever its sense;
#  5. a multi-word term that matches nothing is retried with its head word ("ankle boot" -> "boot"), warned;
#  6. lemmas that only contain the term ("river horse", "hot dog") never match: they are review candidates;
#  7. a class claimed by several names goes to the smallest distance; a tie drops it from all of them.

_IRREGULAR_PLURALS = {"man": "men", "woman": "women", "child": "children", "foot": "feet", "tooth": "teeth",
                      "goose": "geese", "mouse": "mice", "ox": "oxen", "person": "people", "louse": "lice"}
_UNCOUNTED = frozenset({"sheep", "deer", "fish", "bison", "moose", "aircraft", "salmon", "trout", "swine"})


@functools.cache
def imagenet_hierarchy() -> dict[str, Any]:
    """The shipped ``imagenet_hierarchy.json``: ``classes[i]`` (wnid, lemmas, senses, hypernyms, ancestors) in
    timm's ImageNet-1k order, ``synsets[wnid]`` (lemmas, senses, hypernyms), ``source`` and ``license``."""
    return json.loads((resources.files("edgedistill") / "label_maps" / HIERARCHY_FILE).read_text(encoding="utf-8"))


def _number_variants(term: str) -> set[str]:
    """The normalised term plus the singular/plural forms of its last word (spurious forms never match a lemma)."""
    words = normalise_name(term).split()
    if not words:
        return set()
    head, forms = words[-1], {words[-1]}
    singular_of = {v: k for k, v in _IRREGULAR_PLURALS.items()}
    if head in _UNCOUNTED:
        pass
    elif head in _IRREGULAR_PLURALS:
        forms.add(_IRREGULAR_PLURALS[head])
    elif head in singular_of:
        forms.add(singular_of[head])
    elif head.endswith("s") and not head.endswith(("ss", "us", "is")):
        forms.add(head[:-1])
        if head.endswith("ies") and len(head) > 4:
            forms.add(head[:-3] + "y")
        elif head.endswith("ves"):
            forms.update({head[:-3] + "f", head[:-3] + "fe"})
        elif re.search(r"(s|x|z|ch|sh)es$", head):
            forms.add(head[:-2])
    elif re.search(r"[^aeiou]y$", head):
        forms.add(head[:-1] + "ies")
    elif re.search(r"(s|x|z|ch|sh)$", head):
        forms.add(head + "es")
    else:
        forms.add(head + "s")
    return {" ".join(words[:-1] + [f]) for f in forms}


@functools.cache
def _ancestor_distances() -> tuple[dict[str, int], ...]:
    """Per ImageNet class: ``{ancestor wnid: fewest hypernym steps}`` (BFS on the DAG)."""
    h = imagenet_hierarchy()
    out = []
    for cls in h["classes"]:
        dist: dict[str, int] = {}
        queue = deque((w, 1) for w in cls["hypernyms"])
        while queue:
            wnid, d = queue.popleft()
            if wnid not in dist:  # BFS: the first visit is the shortest path
                dist[wnid] = d
                queue.extend((w, d + 1) for w in h["synsets"][wnid]["hypernyms"])
        out.append(dist)
    return tuple(out)


def _match_term(term: str, origin: str, max_sense: int) -> tuple[dict[int, tuple[int, list[str]]], list[dict]]:
    """Own-lemma and hypernym matches of one term (``{index: (distance, reasons)}``) and the senses skipped."""
    h, distances = imagenet_hierarchy(), _ancestor_distances()
    pinned = term if WNID_PATTERN.fullmatch(term) else None
    forms = set() if pinned else _number_variants(term)
    prefix = f"{origin}: " if origin else ""
    matches: dict[int, tuple[int, list[str]]] = {}
    skipped: list[dict] = []

    def add(index: int, distance: int, reason: str) -> None:
        d, reasons = matches.get(index, (distance, []))
        matches[index] = (min(d, distance), reasons + ([prefix + reason] if prefix + reason not in reasons else []))

    def hit(wnid: str, synset: Mapping[str, Any]) -> tuple[str, int] | None:
        if pinned:
            return (f"synset {wnid}", 0) if wnid == pinned else None
        hits = [(lemma, sense) for lemma, sense in zip(synset["lemmas"], synset["senses"]) if normalise_name(lemma) in forms]
        return min(hits, key=lambda x: x[1]) if hits else None

    def note(lemma: str) -> str:
        return "" if pinned or normalise_name(lemma) == normalise_name(term) else f" (number variant of '{term}')"

    for cls in h["classes"]:
        found = hit(cls["wnid"], cls)
        if found and found[1] <= max_sense:
            what = found[0] if pinned else f"lemma '{found[0]}'"
            add(cls["index"], 0, f"{what} of '{', '.join(cls['lemmas'])}'{note(found[0])}")
        elif found:
            skipped.append({"term": term, "synset": cls["wnid"], "lemmas": cls["lemmas"], "sense": found[1],
                            "classes": [cls["index"]]})
    for wnid, synset in sorted(h["synsets"].items()):
        found = hit(wnid, synset)
        if not found:
            continue
        below = [i for i, dist in enumerate(distances) if wnid in dist]
        if found[1] > max_sense:
            skipped.append({"term": term, "synset": wnid, "lemmas": synset["lemmas"], "sense": found[1], "classes": below})
            continue
        for i in below:
            steps = distances[i][wnid]
            add(i, steps, f"hypernym '{', '.join(synset['lemmas'])}' ({wnid}, {steps} level{'s' if steps > 1 else ''} "
                          f"up){note(found[0])}")
    return matches, skipped


def _term_synsets(term: str, max_sense: int) -> list[str]:
    """The synsets (class or inner) a term names: a pinned WordNet id, else every synset with the term (or a number
    variant) as a lemma of sense <= ``max_sense``."""
    if WNID_PATTERN.fullmatch(term):
        return [term]
    h, forms = imagenet_hierarchy(), _number_variants(term)
    named = [(cls["wnid"], cls) for cls in h["classes"]] + sorted(h["synsets"].items())
    return [wnid for wnid, syn in named
            if any(normalise_name(lemma) in forms and sense <= max_sense
                   for lemma, sense in zip(syn["lemmas"], syn["senses"]))]


def _near_misses(wnids: Sequence[str], taken: set[int], limit: int = 12) -> list[dict[str, Any]]:
    """ImageNet classes under the parent of a synset the class name matched that the map left out: boats for 'ship' (both are
    'vessel, watercraft'), 'warplane' for 'airplane' (both 'heavier-than-air craft'). Each names the synset under the
    parent that holds it: the synonym that would take it in."""
    h, distances = imagenet_hierarchy(), _ancestor_distances()
    synsets = {**h["synsets"], **{c["wnid"]: c for c in h["classes"]}}
    out: dict[int, dict[str, Any]] = {}
    for wnid in wnids:
        for parent in synsets[wnid]["hypernyms"]:
            for cls in h["classes"]:
                i, dist = cls["index"], distances[cls["index"]]
                if i in taken or i in out or parent not in dist or wnid in dist or cls["wnid"] == wnid:
                    continue
                # the synset just below the parent on the way to this class: what a user would write as a synonym
                via = cls if parent in cls["hypernyms"] else next(
                    synsets[w] for w in sorted(dist, key=dist.get) if parent in synsets[w]["hypernyms"])
                out[i] = {"index": i, "label": ", ".join(cls["lemmas"]), "parent": ", ".join(synsets[parent]["lemmas"]),
                          "of": ", ".join(synsets[wnid]["lemmas"]), "synonym": via["lemmas"][0].replace("_", " "),
                          "distance": dist[parent]}
    return sorted(out.values(), key=lambda m: (m["distance"], m["synonym"], m["index"]))[:limit]


def label_map_from_names(
    names: Sequence[str],
    synonyms: Mapping[str, Sequence[str]] | None = None,
    *,
    max_sense: int = 1,
) -> tuple[LabelMapHead, dict[str, Any]]:
    """An ImageNet-1k label map for ``names`` from the names alone (WordNet), with the reasons for a person to review.

    Args:
        names: Target class names, e.g. ``["cat", "dog"]``.
        synonyms: Extra terms per name, e.g. ``{"ship": ["boat", "n04530566"]}`` (a WordNet id pins one synset).
        max_sense: Highest WordNet sense number of a term that may match (1: its most frequent sense).

    Returns:
        ``(head, review)``: a LabelMapHead over the 1,000 ImageNet classes, and ``{"classes": {name: {"indices",
        "matches": [{index, wnid, label, distance, reasons}], "skipped_senses", "review_candidates", "near_misses",
        "warnings"}}, "conflicts", "settings", "source"}``. ``near_misses`` are the classes under the parent of a
        synset the name itself matched that no name took (boats for 'ship'), each with the synonym that would take them in.
        :func:`format_review` prints it.

    Raises:
        ConfigError: a name matches no ImageNet class (named, with how to fix it), or duplicate names.
    """
    synonyms = synonyms or {}
    if len({normalise_name(n) for n in names}) != len(names):
        raise ConfigError(f"Duplicate class names in {list(names)}")
    h = imagenet_hierarchy()
    per_name: dict[str, dict[int, tuple[int, list[str]]]] = {}
    details: dict[str, dict[str, Any]] = {}
    for name in names:
        matches: dict[int, tuple[int, list[str]]] = {}
        skipped, warnings, forms = [], [], set()
        terms = [(t.strip(), "") for t in name.split("/") if t.strip()]
        terms += [(t.strip(), f"synonym '{t.strip()}'") for s in synonyms.get(name, ()) for t in s.split("/") if t.strip()]
        for term, origin in terms:
            found, sk = _match_term(term, origin, max_sense)
            forms |= set() if WNID_PATTERN.fullmatch(term) else _number_variants(term)
            words = normalise_name(term).split()
            if not found and len(words) > 1:  # head-word fallback: "ankle boot" -> "boot"
                origin2 = (origin + ", " if origin else "") + f"head word '{words[-1]}' of '{term}'"
                found, sk2 = _match_term(words[-1], origin2, max_sense)
                sk += sk2
                forms |= _number_variants(words[-1])
                if found:
                    warnings.append(f"no synset named '{term}'; matched its head word '{words[-1]}' instead")
            if not found:
                warnings.append(f"term '{term}' matched no ImageNet class (sense <= {max_sense})")
            skipped += sk
            for i, (d, reasons) in found.items():
                d0, r0 = matches.get(i, (d, []))
                matches[i] = (min(d0, d), r0 + [r for r in reasons if r not in r0])
        review = []
        for cls in h["classes"]:  # "lemma 'tabby cat' contains 'cat'": supports a match, on its own only a hint
            contained = [(lemma, f) for lemma in cls["lemmas"] for f in sorted(forms)
                         if normalise_name(lemma) not in forms and f" {f} " in f" {normalise_name(lemma)} "]
            if not contained:
                continue
            reason = f"lemma '{contained[0][0]}' contains '{contained[0][1]}'"
            if cls["index"] in matches:
                if reason not in matches[cls["index"]][1]:
                    matches[cls["index"]][1].append(reason)
            else:
                review.append({"index": cls["index"], "label": ", ".join(cls["lemmas"]), "reason": reason})
        per_name[name] = matches
        details[name] = {"skipped_senses": skipped, "review_candidates": review, "warnings": warnings,
                         "_synsets": [w for term, origin in terms if not origin for w in _term_synsets(term, max_sense)]}

    conflicts = []  # a class claimed by several names: the closest match wins, a tie drops it
    claims: dict[int, dict[str, int]] = {}
    for name, matches in per_name.items():
        for i, (d, _) in matches.items():
            claims.setdefault(i, {})[name] = d
    for i in sorted(claims):
        if len(claims[i]) < 2:
            continue
        best = min(claims[i].values())
        winners = [n for n, d in claims[i].items() if d == best]
        for n in claims[i]:
            if len(winners) > 1 or n != winners[0]:
                del per_name[n][i]
        conflicts.append({"index": i, "label": ", ".join(h["classes"][i]["lemmas"]), "distances": claims[i],
                          "resolution": f"kept in '{winners[0]}'" if len(winners) == 1 else f"dropped: tie between {winners}"})
    unmatched = [n for n in names if not per_name[n]]
    if unmatched:
        hint = "; ".join(f"{n}: {w}" for n in unmatched for w in details[n]["warnings"][:1])
        raise ConfigError(f"Class name(s) {unmatched} match no ImageNet class by lemma or WordNet hypernym ({hint}). "
                          "Add a synonym that does ('deer: antelope', or a WordNet id such as 'n02419796'), raise "
                          "max_sense, or give a label map JSON {class: [ImageNet indices]}")
    taken = {i for m in per_name.values() for i in m}
    for n in names:  # after the conflicts: a class another name keeps is not a miss
        details[n]["near_misses"] = _near_misses(details[n].pop("_synsets"), taken)
    review_out = {
        "classes": {n: {"indices": sorted(per_name[n]),
                        "matches": [{"index": i, "wnid": h["classes"][i]["wnid"],
                                     "label": ", ".join(h["classes"][i]["lemmas"]), "distance": per_name[n][i][0],
                                     "reasons": per_name[n][i][1]} for i in sorted(per_name[n])],
                        **details[n]} for n in names},
        "conflicts": conflicts,
        "settings": {"max_sense": max_sense, "synonyms": {k: list(v) for k, v in synonyms.items()}},
        "source": h["source"],
    }
    return LabelMapHead([sorted(per_name[n]) for n in names]), review_out


def format_review(review: Mapping[str, Any], verbose: bool = False) -> str:
    """A label map from names as text for a person: per class its ImageNet classes grouped by reason, then the doubts."""
    lines = []
    for name, entry in review["classes"].items():
        lines.append(f"{name}: {len(entry['indices'])} ImageNet classes")
        groups: dict[str, list[str]] = {}
        for m in entry["matches"]:
            key = re.sub(r", \d+ levels? up", "", m["reasons"][0])  # 118 dog breeds read as one line
            groups.setdefault(key, []).append(f"{m['index']} {m['label'].split(', ')[0]}")
        for reason, members in groups.items():
            shown = members if verbose or len(members) <= 12 else members[:12] + [f"... {len(members) - 12} more"]
            lines.append(f"  {reason}: {len(members)}: " + " | ".join(shown))
        lines += [f"  ! {w}" for w in entry["warnings"]]
        lines += [f"  - skipped sense {s['sense']} of '{s['term']}': '{', '.join(s['lemmas'])}' would add "
                  f"{len(s['classes'])} class(es)" for s in entry["skipped_senses"]]
        lines += [f"  ? not matched, review: {c['index']} '{c['label'][:60]}' ({c['reason']})"
                  for c in entry["review_candidates"]]
        near: dict[tuple[str, str], list[str]] = {}
        for m in entry.get("near_misses", ()):
            near.setdefault((m["synonym"], m["parent"], m["of"]), []).append(f"{m['index']} {m['label'].split(', ')[0]}")
        lines += [f"  ~ nearly matched, left out: {' | '.join(members)} (under '{parent}', beside '{of}'; to take "
                  f"them add the synonym '{name}: {syn}')" for (syn, parent, of), members in near.items()]
    lines += [f"conflict: {c['index']} '{c['label']}' {c['distances']}: {c['resolution']}" for c in review["conflicts"]]
    return "\n".join(lines)
