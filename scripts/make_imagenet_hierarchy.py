#!/usr/bin/env python3
"""Build ``imagenet_hierarchy.json``: the WordNet 3.0 hypernym DAG above the 1,000 ImageNet-1k classes.

timm ships the ImageNet-1k wnids and their lemmas but not the WordNet hierarchy, which
``edgedistill.heads.label_map.label_map_from_names`` needs to map a name such as "dog" onto
every dog breed (``edgedistill retrieve`` with an ImageNet-classifier teacher).
This script takes the hierarchy from Debian's ``wordnet-base`` package (the WordNet 3.0
database files) and writes a small, self-contained JSON file.

An ImageNet wnid is "n" + the 8-digit byte offset of the synset's line in WordNet 3.0's
``data.noun``, so each class line is read by seeking to that offset.  From there the
script follows ``@`` (hypernym) and ``@i`` (instance hypernym) pointers up to the root
``entity``.  A synset may have several hypernyms, so the ancestors form a DAG; instead of
enumerating every chain (which multiplies for classes with two parents) the output stores

* per class (in timm's index order): wnid, lemmas, direct hypernyms and the sorted union
  of all ancestor synset ids;
* per ancestor synset: lemmas and direct hypernyms, so every chain can be rebuilt;
* for every stored lemma its WordNet sense number for that synset (1 = the word's most
  frequent noun sense, from the synset order in ``index.noun``), so a matcher can tell
  "cat" the animal (sense 1) from "big cat, cat" (sense 7).

Usage (writes ``src/edgedistill/label_maps/imagenet_hierarchy.json``, the committed copy)::

    python scripts/make_imagenet_hierarchy.py               # apt-get download wordnet-base
    python scripts/make_imagenet_hierarchy.py --deb wordnet-base_1%3a3.0-37_all.deb

The output depends only on the .deb contents and timm's class list (no timestamps, sorted
keys), so rerunning it on the same package gives a byte-identical file.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Pointer symbols in data.noun that lead one level up the noun hierarchy.
HYPERNYM_POINTERS = frozenset({"@", "@i"})
EXPECTED_DEB_VERSION = "1:3.0-37"
DATA_NOUN_MEMBER = "usr/share/wordnet/data.noun"
INDEX_NOUN_MEMBER = "usr/share/wordnet/index.noun"
OUTPUT_FORMAT_VERSION = 1
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "src" / "edgedistill" / "label_maps" / "imagenet_hierarchy.json"

# The WordNet licence asks that its notice appear on all copies of the database,
# "including modifications"; this file is an extract, so it carries the notice verbatim.
WORDNET_LICENSE = "\n".join(
    [
        "WordNet 3.0 license (Princeton University):",
        "This software and database is being provided to you, the LICENSEE, by Princeton University under the "
        "following license.  By obtaining, using and/or copying this software and database, you agree that you "
        "have read, understood, and will comply with these terms and conditions.:",
        "Permission to use, copy, modify and distribute this software and database and its documentation for any "
        "purpose and without fee or royalty is hereby granted, provided that you agree to comply with the following "
        "copyright notice and statements, including the disclaimer, and that the same appear on ALL copies of the "
        "software, database and documentation, including modifications that you make for internal use or for "
        "distribution.",
        "WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.",
        'THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR '
        "WARRANTIES, EXPRESS OR IMPLIED.  BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON UNIVERSITY MAKES NO "
        "REPRESENTATIONS OR WARRANTIES OF MERCHANT-ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE OF "
        "THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, "
        "TRADEMARKS OR OTHER RIGHTS.",
        "The name of Princeton University or Princeton may not be used in advertising or publicity pertaining to "
        "distribution of the software and/or database.  Title to copyright in this software, database and any "
        "associated documentation shall at all times remain with Princeton University and LICENSEE agrees to "
        "preserve same.",
        "This file is an extract (noun synsets, lemmas, hypernym pointers, sense order) of WordNet 3.0 as packaged "
        "by Debian (wordnet-base).",
    ]
)


@dataclass(frozen=True)
class NounSynset:
    """One parsed line of ``data.noun``."""

    offset: int
    lemmas: tuple[str, ...]
    hypernyms: tuple[int, ...]

    @property
    def wnid(self) -> str:
        return wnid_of(self.offset)


def wnid_of(offset: int) -> str:
    """ImageNet-style synset id: 'n' + zero-padded 8-digit data.noun byte offset."""
    return f"n{offset:08d}"


def parse_data_line(line: str) -> NounSynset:
    """Parse one synset line of ``data.noun`` (format in wndb(5WN)).

    Layout: offset lex_filenum ss_type w_cnt (word lex_id)*w_cnt p_cnt
    (symbol offset pos source/target)*p_cnt | gloss.  w_cnt is 2-digit hex, p_cnt decimal.
    """
    fields = line.split(" | ", 1)[0].split()
    offset = int(fields[0])
    w_cnt = int(fields[3], 16)
    # WordNet writes multi-word lemmas with underscores; timm and users write spaces.
    lemmas = tuple(fields[4 + 2 * i].replace("_", " ") for i in range(w_cnt))
    pos = 4 + 2 * w_cnt
    p_cnt = int(fields[pos])
    hypernyms: list[int] = []
    for i in range(p_cnt):
        symbol, target, target_pos = fields[pos + 1 + 4 * i : pos + 4 + 4 * i]
        if symbol in HYPERNYM_POINTERS and target_pos == "n":
            hypernyms.append(int(target))
    return NounSynset(offset=offset, lemmas=lemmas, hypernyms=tuple(sorted(set(hypernyms))))


class DataNoun:
    """Random access to ``data.noun`` by byte offset, with a cache of parsed synsets."""

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._cache: dict[int, NounSynset] = {}

    def get(self, offset: int) -> NounSynset:
        if offset not in self._cache:
            end = self._raw.index(b"\n", offset)
            synset = parse_data_line(self._raw[offset:end].decode("utf-8"))
            # A mismatch means the file is not byte-identical to Princeton's WordNet 3.0
            # (e.g. a rebuilt database), and every wnid lookup would be wrong.
            if synset.offset != offset:
                raise ValueError(f"data.noun line at byte {offset} starts with offset {synset.offset}")
            self._cache[offset] = synset
        return self._cache[offset]


def parse_index_noun(text: str, lemmas: set[str]) -> dict[str, list[int]]:
    """Map each wanted lemma (lower case, spaces) to its synset offsets in sense order.

    index.noun lists a lemma's synsets "in order of sense number" (most frequent first).
    Layout: lemma pos synset_cnt p_cnt [ptr_symbol]*p_cnt sense_cnt tagsense_cnt offsets*synset_cnt.
    """
    senses: dict[str, list[int]] = {}
    for line in text.splitlines():
        if line.startswith(" "):  # licence header lines start with two spaces
            continue
        fields = line.split()
        lemma = fields[0].replace("_", " ")
        if lemma not in lemmas:
            continue
        synset_cnt = int(fields[2])
        senses[lemma] = [int(f) for f in fields[len(fields) - synset_cnt :]]
    return senses


def ancestors_of(data: DataNoun, start: int) -> set[int]:
    """All synsets reachable from ``start`` via hypernym pointers (``start`` excluded)."""
    seen: set[int] = set()
    queue = deque(data.get(start).hypernyms)
    while queue:
        offset = queue.popleft()
        if offset in seen:
            continue
        seen.add(offset)
        queue.extend(data.get(offset).hypernyms)
    return seen


def read_deb(deb_path: Path) -> tuple[str, dict[str, bytes]]:
    """Return (package version, {member: bytes}) for data.noun and index.noun of a .deb.

    A .deb is an ar archive holding control.tar.* and data.tar.*; reading it here (instead
    of shelling out to dpkg -x) keeps the script usable on machines without dpkg.
    """
    raw = deb_path.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise ValueError(f"{deb_path} is not a .deb (ar) archive")
    members: dict[str, bytes] = {}
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = raw[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)  # ar pads members to even length

    def open_tar(prefix: str) -> tarfile.TarFile:
        name = next(n for n in members if n.startswith(prefix))
        return tarfile.open(fileobj=io.BytesIO(members[name]), mode="r:*")

    with open_tar("control.tar") as control_tar:
        control_file = control_tar.extractfile("./control")
        assert control_file is not None
        control = control_file.read().decode()
    version = next(line.split(":", 1)[1].strip() for line in control.splitlines() if line.startswith("Version:"))

    files: dict[str, bytes] = {}
    with open_tar("data.tar") as data_tar:
        for member in (DATA_NOUN_MEMBER, INDEX_NOUN_MEMBER):
            extracted = data_tar.extractfile("./" + member)
            if extracted is None:
                raise ValueError(f"{deb_path} has no {member}")
            files[member] = extracted.read()
    return version, files


def download_deb(dest: Path) -> Path:
    """Fetch the candidate ``wordnet-base`` .deb with apt-get into ``dest``."""
    subprocess.run(["apt-get", "download", "wordnet-base"], cwd=dest, check=True)
    debs = sorted(dest.glob("wordnet-base_*.deb"))
    if len(debs) != 1:
        raise RuntimeError(f"expected one wordnet-base .deb in {dest}, found {debs}")
    return debs[0]


def imagenet1k_classes() -> tuple[list[str], list[str]]:
    """timm's ImageNet-1k wnids and lemma strings, in classifier index order."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return list(info.label_names()), list(info.label_descriptions())


def build_hierarchy(deb_path: Path) -> dict[str, Any]:
    """Assemble the JSON document (see module docstring) from a wordnet-base .deb."""
    version, files = read_deb(deb_path)
    if version != EXPECTED_DEB_VERSION:
        print(f"warning: wordnet-base {version}, checked against {EXPECTED_DEB_VERSION}", file=sys.stderr)
    data = DataNoun(files[DATA_NOUN_MEMBER])
    wnids, descriptions = imagenet1k_classes()

    class_offsets = [int(w[1:]) for w in wnids]
    for wnid, description in zip(wnids, descriptions, strict=True):
        # Cross-check against timm's lemma strings: proves the offsets address the same
        # WordNet 3.0 synsets ImageNet was built from.
        lemmas = ", ".join(data.get(int(wnid[1:])).lemmas)
        if lemmas != description:
            raise ValueError(f"{wnid}: WordNet lemmas {lemmas!r} != timm description {description!r}")

    class_ancestors = [ancestors_of(data, o) for o in class_offsets]
    ancestor_offsets = sorted(set().union(*class_ancestors))
    overlap = set(ancestor_offsets) & set(class_offsets)
    if overlap:
        # ILSVRC classes are meant to be disjoint leaves; say so if that ever changes.
        print(f"note: {len(overlap)} classes are ancestors of other classes", file=sys.stderr)

    stored = sorted(set(class_offsets) | set(ancestor_offsets))
    wanted_lemmas = {lemma.lower() for o in stored for lemma in data.get(o).lemmas}
    sense_order = parse_index_noun(files[INDEX_NOUN_MEMBER].decode("utf-8"), wanted_lemmas)

    def senses(synset: NounSynset) -> list[int]:
        """Sense number of ``synset`` for each of its lemmas (1 = most frequent)."""
        return [sense_order[lemma.lower()].index(synset.offset) + 1 for lemma in synset.lemmas]

    classes = []
    for index, (offset, ancestors) in enumerate(zip(class_offsets, class_ancestors, strict=True)):
        synset = data.get(offset)
        classes.append(
            {
                "index": index,
                "wnid": synset.wnid,
                "lemmas": list(synset.lemmas),
                "senses": senses(synset),
                "hypernyms": [wnid_of(h) for h in synset.hypernyms],
                "ancestors": [wnid_of(a) for a in sorted(ancestors)],
            }
        )
    synsets = {
        wnid_of(o): {
            "lemmas": list(data.get(o).lemmas),
            "senses": senses(data.get(o)),
            "hypernyms": [wnid_of(h) for h in data.get(o).hypernyms],
        }
        for o in ancestor_offsets
    }
    return {
        "version": OUTPUT_FORMAT_VERSION,
        "source": f"WordNet 3.0 (Debian wordnet-base {version})",
        "license": WORDNET_LICENSE,
        "debian_package": {"name": "wordnet-base", "version": version},
        "data_noun_sha256": hashlib.sha256(files[DATA_NOUN_MEMBER]).hexdigest(),
        "index_noun_sha256": hashlib.sha256(files[INDEX_NOUN_MEMBER]).hexdigest(),
        "class_order": "timm.data.ImageNetInfo('imagenet-1k').label_names()",
        "fields": {
            "classes[i]": "index, wnid, lemmas, senses (WordNet sense number per lemma, 1 = most frequent), "
            "hypernyms (direct, via @ and @i pointers), ancestors (union of all hypernym chains up to 'entity')",
            "synsets[wnid]": "lemmas, senses, hypernyms of every synset that is an ancestor of some class",
        },
        "classes": classes,
        "synsets": synsets,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deb", type=Path, help="wordnet-base .deb to read (default: apt-get download)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output JSON path (default: the package's copy)"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        deb = args.deb if args.deb is not None else download_deb(Path(tmp))
        hierarchy = build_hierarchy(deb)
    # Compact separators and sorted keys: small file, byte-identical on rerun.
    text = json.dumps(hierarchy, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    from edgedistill import storage

    storage.write_text(args.out, text + "\n")  # atomic: a killed run never leaves half a file
    print(
        f"wrote {args.out} ({args.out.stat().st_size} bytes): {len(hierarchy['classes'])} classes, "
        f"{len(hierarchy['synsets'])} ancestor synsets, {hierarchy['source']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
