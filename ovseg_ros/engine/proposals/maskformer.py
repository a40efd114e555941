"""The paper's stage 1: a MaskFormer proposal network (engine/maskformer/) as a proposal
generator, registered as "maskformer".

Per image: the network's soft masks (sigmoid, at the image size) and, given a vocabulary, its
class probabilities: softmax over the vocabulary's classes plus non-object, non-object dropped
(as the reference). `trained_classes` marks the vocabulary classes the network was trained on
(from the checkpoint, or given), so stage 2 can apply the seen/unseen form of the ensemble;
when unknown (e.g. a reference checkpoint), it is None and the unseen form applies to all.

The reference's ensemble weight (lambda, SegmenterConfig.ensemble_weight) and mask threshold
(SegmenterConfig.mask_threshold) per evaluation set are in REFERENCE_SETTINGS.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ovseg_ros.engine.clip_model import ClipModel, bundled_model_file, resolve_device
from ovseg_ros.engine.maskformer.checkpoint import load_maskformer
from ovseg_ros.engine.maskformer.learned_prompts import encode_with_learned_prompts
from ovseg_ros.engine.proposals.base import (
    ProposalGenerator,
    Proposals,
    register_proposal_generator,
)
from ovseg_ros.engine.vocabulary import EncodedVocabulary

REFERENCE_SETTINGS: dict[str, tuple[float, float]] = {
    "coco-stuff-156/15": (0.8, 0.5),
    "voc-15/5": (0.7, 0.5),
    "ade20k-150": (0.5, 0.4),
    "ade20k-847": (0.7, 0.3),
    "pascal-context-59": (0.4, 0.5),
    "pascal-voc-20": (0.4, 0.5),
    "cityscapes-19": (0.4, 0.3),
}
"""(ensemble weight lambda, mask threshold) of the reference's configs (zsseg.baseline): the
zero-shot COCO-Stuff 156/15 and VOC 15/5 settings (network trained on the seen classes), and the
cross-dataset settings of the network trained on COCO-Stuff-156."""

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
    clip: the CLIP model of stage 2; when given and the checkpoint holds learned prompt vectors,
    the class head scores against text embeddings made with those prompts (as the reference),
    else against the vocabulary's own text embeddings.
    Images are resized to the network's training size when the checkpoint records one.
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        max_proposals: int = 100,
        device: str = "auto",
        trained_classes: Sequence[str] | None = None,
        clip: ClipModel | None = None,
    ) -> None:
        if max_proposals < 1:
            raise ValueError(f"max_proposals must be >= 1, got {max_proposals}")
        self.device = resolve_device(device)
        self.loaded = load_maskformer(checkpoint or default_maskformer_checkpoint(), self.device)
        self.model = self.loaded.model
        self.max_proposals = max_proposals
        names = trained_classes if trained_classes is not None else self.loaded.trained_classes
        self.trained_names = None if names is None else {n.strip().lower() for n in names}
        self.clip = clip if self.loaded.prompts is not None else None
        self._prompted: tuple[int, torch.Tensor] | None = None

    def text_embeddings(self, vocabulary: EncodedVocabulary) -> torch.Tensor:
        """(C, D) unit-norm class embeddings for the class head: through the learned prompts
        when there are some and a CLIP model was given (cached per vocabulary version), else
        the vocabulary's own."""
        if self.clip is None:
            return vocabulary.text_embeddings.to(self.device, torch.float32)
        if self._prompted is None or self._prompted[0] != vocabulary.version:
            rows = [
                encode_with_learned_prompts(self.clip, self.loaded.prompts, list(group)).mean(0)
                for group in vocabulary.synonyms
            ]
            embeddings = F.normalize(torch.stack(rows), dim=-1).to(self.device)
            self._prompted = (vocabulary.version, embeddings)
        return self._prompted[1]

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
