"""Stage 1 interface: a proposal generator turns an image into class-agnostic masks.

A generator is any object with `__call__(image, vocabulary=None) -> Proposals`. Learned
generators (the paper's MaskFormer, SAM-style models) may also score their masks against the
vocabulary; stage 2 then ensembles those scores with CLIP's. Generators register a factory
under a name, so settings (a ROS parameter, a command-line flag) can pick one by name.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ovseg_ros.engine.vocabulary import EncodedVocabulary


@dataclass
class Proposals:
    """Class-agnostic mask proposals for one image.

    masks: (N, H, W), bool (hard masks, used as they are) or float32 in [0, 1] (soft masks,
        binarised at the segmenter's mask_threshold for stage 2), on the CPU or the CLIP device;
        masks may overlap (several granularities).
    weights: (N,) float32 > 0, each mask's weight in the per-pixel aggregation; None means 1
        for every mask (as in the paper).
    class_scores: (N, C) float32 probabilities over the vocabulary's C classes, from a learned
        generator; None for training-free generators.
    trained_classes: (C,) bool, the vocabulary classes the learned generator was trained on
        (ensemble weighting); None: none known.
    """

    masks: torch.Tensor
    weights: torch.Tensor | None = None
    class_scores: torch.Tensor | None = None
    trained_classes: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.masks.shape[0])


class ProposalGenerator(ABC):
    """Stage 1: image -> class-agnostic mask proposals.

    takes_tensors: True for generators that also take the image as an (H, W, 3) uint8 tensor on
    the CLIP device, so a frame goes to the device once (TwoStageSegmenter passes it so).
    """

    takes_tensors: bool = False

    @abstractmethod
    def __call__(self, image: np.ndarray, vocabulary: EncodedVocabulary | None = None) -> Proposals:
        """image: (H, W, 3) uint8 RGB; vocabulary: for generators that score their masks."""


_FACTORIES: dict[str, Callable[..., ProposalGenerator]] = {}


def register_proposal_generator(
    name: str,
) -> Callable[[Callable[..., ProposalGenerator]], Callable[..., ProposalGenerator]]:
    """Class decorator: makes a generator buildable by `name` with build_proposal_generator."""

    def register(factory: Callable[..., ProposalGenerator]) -> Callable[..., ProposalGenerator]:
        if name in _FACTORIES:
            raise ValueError(f"a proposal generator named {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory

    return register


def proposal_generator_names() -> list[str]:
    """Names accepted by build_proposal_generator."""
    return sorted(_FACTORIES)


def build_proposal_generator(name: str, **settings: object) -> ProposalGenerator:
    """The generator registered as `name`, built with keyword `settings`.

    Raises ValueError for an unknown name or a setting the generator does not take.
    """
    if name not in _FACTORIES:
        raise ValueError(
            f"unknown proposal generator {name!r}; known: {', '.join(proposal_generator_names())}"
        )
    factory = _FACTORIES[name]
    try:
        inspect.signature(factory).bind(**settings)
    except TypeError as exc:
        raise ValueError(f"bad settings for proposal generator {name!r}: {exc}") from exc
    return factory(**settings)
