"""The vocabulary: validated class names, synonyms, and their cached CLIP text embeddings.

A vocabulary is a list of classes. Each entry is one class name, or several synonyms for one
class separated by "|", e.g. "sofa|couch|settee": the first synonym is the class's display name,
and the class's text embedding is the normalised mean of its synonyms' embeddings (each synonym
embedded through every prompt template, see prompts.py). Names are matched for duplicates after
normalisation: surrounding and repeated whitespace removed, case ignored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ovseg_ros.engine.clip_model import ClipModel
from ovseg_ros.engine.prompts import LEARNED, fill_template, resolve_templates

SYNONYM_SEPARATOR = "|"
MAX_CLASSES = 1000
"""Default upper bound on the number of classes of a vocabulary."""
MAX_NAME_LENGTH = 80
"""Longest allowed class name (one synonym), in characters: room for ADE20K's WordNet-style
names as the reference gives them to CLIP (the longest, "conveyer belt, conveyor belt, ...", has
61)."""
DEFAULT_TEMPLATES = "vild14"
"""The paper's hand-made prompt set."""


def _tidy(name: str) -> str:
    """Surrounding whitespace removed, inner runs of whitespace made one space."""
    return " ".join(name.split())


def split_synonyms(entry: str) -> tuple[str, ...]:
    """An entry's synonyms, tidied, empty ones kept: "sofa | couch" -> ("sofa", "couch")."""
    return tuple(_tidy(part) for part in entry.split(SYNONYM_SEPARATOR))


def parse_class_list(text: str) -> list[str]:
    """A comma-separated list, as typed on a command line: "person, chair,sofa|couch" ->
    ["person", "chair", "sofa|couch"]. Not validated (see validate_class_names)."""
    return [part.strip() for part in text.split(",")]


def validate_class_names(names: Sequence[str], max_classes: int = MAX_CLASSES) -> list[str]:
    """Checks a vocabulary and returns its entries tidied ("sofa |  couch" -> "sofa|couch").

    Raises ValueError with the reason: not a list of strings, no classes, more than
    `max_classes` classes, an empty name or synonym, a name longer than MAX_NAME_LENGTH
    characters, or the same name twice (compared without case and extra whitespace, across all
    synonyms of all classes).
    """
    if isinstance(names, str):
        raise ValueError(
            f"the vocabulary must be a list of class names, not one string ({names!r}); "
            "split a comma-separated string first"
        )
    names = list(names)
    if not names:
        raise ValueError("the vocabulary is empty: give at least one class name")
    if len(names) > max_classes:
        raise ValueError(
            f"the vocabulary has {len(names)} classes; at most {max_classes} are allowed"
        )
    tidied: list[str] = []
    first_seen: dict[str, int] = {}
    for index, entry in enumerate(names):
        if not isinstance(entry, str):
            raise ValueError(f"class {index} is not a string: {entry!r}")
        synonyms = split_synonyms(entry)
        for synonym in synonyms:
            if not synonym:
                raise ValueError(
                    f"class {index} ({entry!r}) has an empty name"
                    + (" or synonym" if len(synonyms) > 1 else "")
                )
            if len(synonym) > MAX_NAME_LENGTH:
                raise ValueError(
                    f"class {index}: name {synonym[:20]!r}... is {len(synonym)} characters long; "
                    f"at most {MAX_NAME_LENGTH} are allowed"
                )
            key = synonym.casefold()
            if key in first_seen:
                other = first_seen[key]
                where = "twice in class" if other == index else f"in classes {other} and"
                raise ValueError(f"duplicate class name {synonym!r}: {where} {index}")
            first_seen[key] = index
        tidied.append(SYNONYM_SEPARATOR.join(synonyms))
    return tidied


@dataclass(frozen=True)
class EncodedVocabulary:
    """A vocabulary ready for segmentation; immutable, so a result made with it stays consistent.

    version: increases with every vocabulary an encoder makes (1 for the first).
    class_names: C display names (each class's first synonym).
    synonyms: C tuples, all names of each class.
    templates: the prompt templates used.
    text_embeddings: (C, D) float32 on the CLIP device, unit norm.
    """

    version: int
    class_names: list[str]
    synonyms: tuple[tuple[str, ...], ...]
    templates: tuple[str, ...]
    text_embeddings: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class VocabularyEncoder:
    """Makes EncodedVocabulary objects for one CLIP model, caching one text embedding per
    (templates, name): changing the vocabulary runs the text tower only for new names.

    learned: the text of the templates value LEARNED: names -> (len(names), D) unit-norm
    embeddings through a checkpoint's learned prompt vectors (TwoStageSegmenter.learned_text),
    or None when there are none (LEARNED is then refused).

    Thread-safe: encode() may run on any thread (e.g. a parameter callback) while images are
    segmented with an earlier vocabulary.
    """

    def __init__(
        self,
        clip: ClipModel,
        max_classes: int = MAX_CLASSES,
        prompts_per_batch: int = 256,
        learned: Callable[[list[str]], torch.Tensor] | None = None,
    ) -> None:
        self.clip = clip
        self.max_classes = max_classes
        self.prompts_per_batch = prompts_per_batch
        self.learned = learned
        self._cache: dict[tuple[tuple[str, ...], str], torch.Tensor] = {}
        self._version = 0
        self._lock = threading.Lock()

    @property
    def cache_size(self) -> int:
        """Number of cached (templates, name) embeddings."""
        return len(self._cache)

    def resolve_templates(self, templates: str | Sequence[str]) -> tuple[str, ...]:
        """prompts.resolve_templates, also refusing LEARNED when this encoder has no learned
        prompt vectors (ValueError saying where they come from)."""
        template_set = resolve_templates(templates)
        if template_set == (LEARNED,) and self.learned is None:
            raise ValueError(
                f"prompt templates {LEARNED!r} need learned prompt vectors: a zsseg checkpoint "
                "of a learnable-prompt setting as the maskformer proposal checkpoint; this one "
                "has none"
            )
        return template_set

    def encode(
        self,
        names: Sequence[str],
        templates: str | Sequence[str] = DEFAULT_TEMPLATES,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> EncodedVocabulary:
        """Validates `names` (see validate_class_names) and `templates` (set names and/or
        templates, see prompts.resolve_templates); returns the encoded vocabulary, with a new
        version.

        on_progress(done, total): called before the first text-tower batch with done=0 and after
        each batch, counting the names not cached yet; not called when all are cached.
        """
        entries = validate_class_names(names, self.max_classes)
        template_set = self.resolve_templates(templates)
        synonyms = tuple(split_synonyms(entry) for entry in entries)
        with self._lock:
            self._embed_missing([n for group in synonyms for n in group], template_set, on_progress)
            rows = [
                torch.stack([self._cache[(template_set, n)] for n in group]).mean(0)
                for group in synonyms
            ]
            self._version += 1
            version = self._version
        return EncodedVocabulary(
            version=version,
            class_names=[group[0] for group in synonyms],
            synonyms=synonyms,
            templates=template_set,
            text_embeddings=F.normalize(torch.stack(rows), dim=-1),
        )

    def _embed_missing(
        self,
        names: list[str],
        templates: tuple[str, ...],
        on_progress: Callable[[int, int], None] | None,
    ) -> None:
        """Runs the text tower for the names not cached yet under `templates`: per name the
        normalised mean of its templates' (unit-norm) sentence embeddings."""
        missing = list(dict.fromkeys(n for n in names if (templates, n) not in self._cache))
        if not missing:
            return
        report = on_progress or (lambda done, total: None)
        report(0, len(missing))
        if templates == (LEARNED,):
            for start in range(0, len(missing), self.prompts_per_batch):
                chunk = missing[start : start + self.prompts_per_batch]
                for name, embedding in zip(chunk, self.learned(chunk), strict=True):
                    self._cache[(templates, name)] = embedding.float()
                report(start + len(chunk), len(missing))
            return
        names_per_batch = max(1, self.prompts_per_batch // len(templates))
        for start in range(0, len(missing), names_per_batch):
            chunk = missing[start : start + names_per_batch]
            sentences = [fill_template(t, n) for n in chunk for t in templates]
            embeddings = self.clip.encode_texts(sentences).view(len(chunk), len(templates), -1)
            averaged = F.normalize(embeddings.mean(dim=1), dim=-1)
            for name, embedding in zip(chunk, averaged, strict=True):
                self._cache[(templates, name)] = embedding
            report(start + len(chunk), len(missing))
