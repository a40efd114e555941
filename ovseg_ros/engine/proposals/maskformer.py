"""The paper's stage 1: a MaskFormer proposal network (engine/maskformer/) as a proposal
generator, registered as "maskformer".

Per image: the network's soft masks (sigmoid, at the image size) and, given a vocabulary, its
class probabilities: softmax over the vocabulary's classes plus non-object, non-object dropped
(as the reference). `trained_classes` marks the vocabulary classes the network was trained on
(from the checkpoint, or given), so stage 2 can apply the seen/unseen form of the ensemble;
when unknown (e.g. a reference checkpoint), it is None and the unseen form applies to all.

The reference's settings per configuration (ensemble weight, mask threshold, prompts of the
class head and of stage 2, test resize) are in engine/paper.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ovseg_ros.engine.clip_model import ClipModel, bundled_model_file, resolve_device
from ovseg_ros.engine.maskformer.checkpoint import LearnedPrompts, load_maskformer
from ovseg_ros.engine.maskformer.learned_prompts import encode_with_learned_prompts
from ovseg_ros.engine.prompts import LEARNED, resolve_templates
from ovseg_ros.engine.proposals.base import (
    ProposalGenerator,
    Proposals,
    register_proposal_generator,
)
from ovseg_ros.engine.vocabulary import EncodedVocabulary, VocabularyEncoder

TOY_MASKFORMER = "ovseg-toy-maskformer.safetensors"
"""The committed proposal network trained on the toy world's seen shapes."""


def default_maskformer_checkpoint() -> Path:
    """The committed toy proposal network (see clip_model.bundled_model_file)."""
    return bundled_model_file(TOY_MASKFORMER)


@register_proposal_generator("maskformer")
class MaskFormerProposalGenerator(ProposalGenerator):
    """Proposals from a MaskFormer checkpoint (the project's safetensors or a reference .pth).

    checkpoint: file path (a relative one as clip_model.resolve_weights_path finds it); None
    means the committed toy network. max_proposals: keep at most this many queries (those least
    likely non-object when a vocabulary is given). device: "auto", "cuda" or "cpu".
    trained_classes: names the network was trained on, overriding the checkpoint's record (use
    it for reference checkpoints, which do not record them).
    clip: the CLIP model of stage 2. head_prompts: the text the class head scores against:
    None (with clip given, the checkpoint's learned prompt vectors when it has some, as the
    reference's learnable-prompt configs; else the vocabulary's own text embeddings), LEARNED
    (the learned prompt vectors, which the checkpoint must have), or template sets / templates
    (prompts.resolve_templates; the reference's predefined-prompt adapters), the last two with
    clip given.
    Images are resized to the network's training size when the checkpoint records one.
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        max_proposals: int = 100,
        device: str = "auto",
        trained_classes: Sequence[str] | None = None,
        clip: ClipModel | None = None,
        head_prompts: str | Sequence[str] | None = None,
    ) -> None:
        if max_proposals < 1:
            raise ValueError(f"max_proposals must be >= 1, got {max_proposals}")
        if head_prompts is not None and clip is None:
            raise ValueError("head_prompts need the CLIP model (clip)")
        self.device = resolve_device(device)
        self.loaded = load_maskformer(checkpoint or default_maskformer_checkpoint(), self.device)
        self.model = self.loaded.model
        self.max_proposals = max_proposals
        names = trained_classes if trained_classes is not None else self.loaded.trained_classes
        self.trained_names = None if names is None else {n.strip().lower() for n in names}
        self.clip = clip
        self.head_encoder: VocabularyEncoder | None = None
        self._head: tuple[tuple[tuple[str, ...], ...], torch.Tensor] | None = None
        if clip is not None and (head_prompts is not None or self.loaded.prompts is not None):
            self.head_templates = resolve_templates(
                LEARNED if head_prompts is None else head_prompts
            )
            if self.head_templates == (LEARNED,) and self.loaded.prompts is None:
                raise ValueError(
                    f"{self.loaded.source} holds no learned prompt vectors for the class head; "
                    "name prompt templates for it instead"
                )
            self.head_encoder = VocabularyEncoder(
                clip, max_classes=10**6, learned=self.learned_text(self.loaded.prompts)
            )

    def learned_text(
        self, prompts: LearnedPrompts | None
    ) -> Callable[[list[str]], torch.Tensor] | None:
        """names -> (len(names), D) unit-norm embeddings through `prompts` with the CLIP model,
        or None without prompts or CLIP model."""
        if prompts is None or self.clip is None:
            return None
        clip = self.clip
        return lambda names: encode_with_learned_prompts(clip, prompts, names)

    @property
    def stage_two_text(self) -> Callable[[list[str]], torch.Tensor] | None:
        """The learned prompt text of the reference's stage 2 (LoadedMaskFormer.
        stage_two_prompts) for VocabularyEncoder(learned=...), or None."""
        return self.learned_text(self.loaded.stage_two_prompts)

    def text_embeddings(self, vocabulary: EncodedVocabulary) -> torch.Tensor:
        """(C, D) unit-norm class embeddings for the class head: the vocabulary's names encoded
        with the head's prompts (head_prompts; cached per class list), or the vocabulary's own
        when it was made with the same prompts or the head has none."""
        if self.head_encoder is None or (
            vocabulary.templates == self.head_templates
            # LEARNED in stage 2 means the separate adapter's vectors when there is one
            and not (self.head_templates == (LEARNED,) and self.loaded.region_prompts is not None)
        ):
            return vocabulary.text_embeddings.to(self.device, torch.float32)
        if self._head is None or self._head[0] != vocabulary.synonyms:
            names = ["|".join(group) for group in vocabulary.synonyms]
            head = self.head_encoder.encode(names, self.head_templates)
            self._head = (vocabulary.synonyms, head.text_embeddings.to(self.device, torch.float32))
        return self._head[1]

    def trained_mask(self, vocabulary: EncodedVocabulary) -> torch.Tensor | None:
        """(C,) bool: the vocabulary classes any of whose synonyms the network was trained on."""
        if self.trained_names is None:
            return None
        return torch.tensor(
            [any(s.lower() in self.trained_names for s in group) for group in vocabulary.synonyms]
        )

    def __call__(self, image: np.ndarray, vocabulary: EncodedVocabulary | None = None) -> Proposals:
        height, width = image.shape[:2]
        network_input = image
        if self.loaded.image_size is not None and self.loaded.image_size != (height, width):
            size_h, size_w = self.loaded.image_size
            network_input = cv2.resize(image, (size_w, size_h), interpolation=cv2.INTER_AREA)
        proposals = self.model.propose(network_input)
        masks = proposals.masks
        if masks.shape[-2:] != (height, width):
            masks = F.interpolate(
                masks[None], size=(height, width), mode="bilinear", align_corners=False
            )[0]
        class_scores = None
        keep = torch.arange(min(self.max_proposals, masks.shape[0]), device=masks.device)
        if vocabulary is not None:
            text = self.text_embeddings(vocabulary)
            if text.shape[1] != self.model.config.embedding_dim:
                raise ValueError(
                    f"the vocabulary's text embeddings have {text.shape[1]} dimensions but the "
                    f"proposal network's class head has {self.model.config.embedding_dim}; "
                    "use the CLIP model the network was trained with"
                )
            with torch.inference_mode():
                logits = self.model.class_logits(proposals.embeddings, text)
            probabilities = logits.softmax(-1)
            keep = probabilities[:, -1].argsort()[: self.max_proposals].sort().values
            class_scores = probabilities[keep, :-1].float()
        return Proposals(
            masks=masks if len(keep) == len(masks) else masks[keep],  # keep is sorted
            class_scores=class_scores,
            trained_classes=None if vocabulary is None else self.trained_mask(vocabulary),
        )
