"""Class prompts: the file that names the classes of a zero-label classifier, which the zero-shot head is built from.

A prompts file has one class per line, optionally followed by synonyms; ``#`` starts a comment::

    # pets.txt
    cat: tabby cat, kitten
    dog: puppy
    sports car          # a name alone is fine

The class name is what the student predicts (and a held-out folder's sub-folder name); every
name and synonym is a *term*. A CLIP teacher's text head embeds every term with each prompt
template ("a photo of a {}.") and averages them per class; an ImageNet classifier's label map
matches every term to ImageNet class names and their WordNet hypernyms
(:func:`edgedistill.heads.label_map.label_map_from_names`); a synonym may be a WordNet id
(``n02419796``) to pin one synset (the text head skips those).

This module is torch-free; the head the prompts define is :func:`edgedistill.heads.zero_shot.prompt_head`.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from edgedistill.errors import ConfigError

WNID_PATTERN = re.compile(r"n\d{8}")  # a WordNet id, e.g. n02419796


@dataclass(frozen=True)
class ClassPrompt:
    """One class of a prompts file.

    Attributes:
        name: The class name (what the student predicts).
        synonyms: Further terms for the same class (words, phrases, or WordNet ids).
        line: Line number in the file (for messages).
    """

    name: str
    synonyms: tuple[str, ...] = ()
    line: int = 0

    @property
    def terms(self) -> tuple[str, ...]:
        """The name, then its synonyms."""
        return (self.name, *self.synonyms)


@functools.cache  # label maps compare every WordNet lemma with it
def normalise_name(text: str) -> str:
    """Names compare case-insensitively, with ``_``/``-`` as spaces and single spaces: 'T-shirt' -> 't shirt'."""
    return " ".join(re.sub(r"[-_]", " ", text.lower()).split())


def parse_prompts(text: str, where: str = "prompts") -> list[ClassPrompt]:
    """The classes of a prompts file's text, checked.

    Args:
        text: The file's content.
        where: Its name, for messages.

    Raises:
        ConfigError: one line naming the file, the line and the problem: no classes, fewer than two, an empty
            name or synonym, a name with a character the format uses, a class or term given twice.
    """
    classes: list[ClassPrompt] = []
    owner: dict[str, tuple[str, int]] = {}  # term key -> (class name, line)
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, rest = line.partition(":")
        name = " ".join(name.split())
        synonyms = tuple(" ".join(s.split()) for s in rest.split(",")) if sep else ()
        if not name:
            raise ConfigError(f"{where}:{n}: {raw.strip()!r} has no class name before ':'; write 'name: synonym, ...'")
        if sep and (not synonyms or any(not s for s in synonyms)):
            raise ConfigError(f"{where}:{n}: {raw.strip()!r} has an empty synonym; write 'name: synonym, synonym' "
                              "(or the name alone)")
        for term in (name, *synonyms):
            key = normalise_name(term)
            if key in owner:
                cls, m = owner[key]
                raise ConfigError(f"{where}:{n}: {term!r} is already given on line {m} (class {cls!r}); every class "
                                  "and synonym must appear once")
            owner[key] = (name, n)
        if WNID_PATTERN.fullmatch(name):
            raise ConfigError(f"{where}:{n}: class name {name!r} is a WordNet id; name the class and give the id as a "
                              f"synonym ('deer: {name}')")
        classes.append(ClassPrompt(name, synonyms, n))
    if not classes:
        raise ConfigError(f"{where} names no classes; write one class per line, e.g. 'cat: tabby cat, kitten'")
    if len(classes) < 2:
        raise ConfigError(f"{where} names one class ({classes[0].name!r}); a classifier needs at least two")
    return classes


def read_prompts(path: str | Path) -> list[ClassPrompt]:
    """Read and check a prompts file (UTF-8).

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8, or not a valid prompts file.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"Prompts file {str(path)!r} does not exist; write one class per line, e.g. 'cat: kitten'")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"Prompts file {str(path)!r} is not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"Prompts file {str(path)!r} cannot be read ({e.strerror})") from None
    return parse_prompts(text, str(path))


def class_names(prompts: Sequence[ClassPrompt]) -> list[str]:
    """The class names, in file order."""
    return [c.name for c in prompts]


def prompts_digest(prompts: Sequence[ClassPrompt]) -> str:
    """sha256 of the classes and terms (not of comments or spacing): what a retrieval depends on."""
    return hashlib.sha256("\n".join("\t".join(c.terms) for c in prompts).encode()).hexdigest()
