"""Segment Anything as stage 1: "sam" (the `segment-anything` package, SAM 1) and "sam2" (the
`sam2` package, SAM 2 / 2.1), both an optional extra: `pip install "ovseg_ros[sam]"`.

Per frame: the image encoder runs once (the package's predictor, `set_image`); a regular grid of
points_per_side x points_per_side single-point prompts (default 16 x 16; the packages' automatic
mask generators use 32 x 32, four times the decoder work) goes through the prompt encoder and the
mask decoder points_per_batch at a time, each point giving three masks (multimask output) with
their predicted IoU. A mask is kept when its predicted IoU and its stability score (the IoU of
the mask thresholded at +1 and at -1 on the logits) reach their thresholds; boxes of the kept
masks are de-duplicated with non-maximum suppression (nms_iou), best predicted IoU first, and at
most max_proposals survive each batch. All of it runs on the low-resolution (256 x 256 for a
1024 input) logits with torch on the device; only the survivors are upscaled to the image size.
Memory therefore stays bounded by one batch of decoder outputs, whatever the grid size.

Unlike the packages' automatic mask generators, masks never leave the device, there is no
per-mask RLE or numpy round trip, and the statistics are computed at the decoder's resolution
(the stability score is a ratio of areas, so it barely depends on the resolution it is read at).

Weights: `checkpoint`, a file as Meta publishes it (sam_vit_b_01ec64.pth, sam2.1_hiera_tiny.pt,
...) or as safetensors; the model type (`model`) is read from the checkpoint when not given.
`random_weights=True` builds the architecture with random weights (benchmarks, tests).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from ovseg_ros.engine.clip_model import (
    CheckpointMismatchError,
    check_state_dict,
    read_state_dict,
    resolve_device,
    resolve_weights_path,
)
from ovseg_ros.engine.crops import mask_boxes
from ovseg_ros.engine.proposals.base import (
    ProposalGenerator,
    Proposals,
    register_proposal_generator,
)
from ovseg_ros.engine.vocabulary import EncodedVocabulary

SAM_MODELS = ("vit_b", "vit_l", "vit_h")
"""SAM 1 model types (segment_anything.sam_model_registry), smallest first."""

SAM_EMBED_DIMS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
"""Width of each SAM 1 image encoder, to tell a checkpoint's model type."""

SAM2_SIZES = {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}
"""SAM 2 Hiera sizes: the config files' short names and the checkpoint files' long ones."""

SAM2_TRUNKS = {(96, 12): "t", (96, 16): "s", (112, 24): "b+", (144, 48): "l"}
"""(width, number of blocks) of each Hiera trunk, to tell a checkpoint's size."""


def _sam2_configs() -> dict[str, str]:
    """Model names -> config files shipped inside the sam2 package. SAM 2.1: "hiera_t",
    "hiera_tiny", "sam2.1_hiera_t", "sam2.1_hiera_tiny" (and the same for s, b+, l); SAM 2.0:
    "sam2_hiera_t", "sam2_hiera_tiny", ...; "hiera_b+" also answers to "hiera_bp"."""
    configs = {}
    for short, long in SAM2_SIZES.items():
        for version, prefixes in (("sam2.1", ("", "sam2.1_")), ("sam2", ("sam2_",))):
            config = f"configs/{version}/{version}_hiera_{short}.yaml"
            for prefix in prefixes:
                for size in dict.fromkeys((short, long, short.replace("+", "p"))):
                    configs[f"{prefix}hiera_{size}"] = config
    return configs


SAM2_CONFIGS = _sam2_configs()
DEFAULT_SAM_MODEL = "vit_b"
DEFAULT_SAM2_MODEL = "hiera_t"


def is_proposal_model(name: str) -> bool:
    """Whether `name` may be a "sam" or "sam2" model: empty (from the checkpoint), one of
    SAM_MODELS or SAM2_CONFIGS, or a config file of the sam2 package (*.yaml)."""
    return name == "" or name in SAM_MODELS or name in SAM2_CONFIGS or name.endswith(".yaml")


class MissingExtraError(ImportError, RuntimeError):
    """An optional package a generator needs is not installed (a RuntimeError too, so that the
    command line and the node report it as a user error, in one line)."""


def import_extra(module: str, generator: str, package: str) -> ModuleType:
    """`module`, or MissingExtraError saying which package the generator needs and how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"proposal generator {generator!r} needs the {package} package: "
            f'pip install "ovseg_ros[sam]" ({exc})'
        ) from exc


def point_grid(points_per_side: int, height: int, width: int) -> torch.Tensor:
    """(n*n, 2) float32 (x, y) pixel coordinates of an n x n grid of cell centres, row by row."""
    steps = (torch.arange(points_per_side, dtype=torch.float32) + 0.5) / points_per_side
    ys, xs = torch.meshgrid(steps * height, steps * width, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def stability_scores(logits: torch.Tensor, threshold: float = 0.0, offset: float = 1.0):
    """(N,) float32: per mask, the area where logits > threshold + offset over the area where
    logits > threshold - offset (0 where the second is empty). logits: (N, h, w)."""
    inner = (logits > threshold + offset).flatten(1).sum(1)
    outer = (logits > threshold - offset).flatten(1).sum(1)
    return inner.float() / outer.clamp(min=1).float()


def select_masks(
    logits: torch.Tensor,
    scores: torch.Tensor,
    pred_iou_threshold: float,
    stability_threshold: float,
    nms_iou: float,
    limit: int,
    mask_threshold: float = 0.0,
    stability_offset: float = 1.0,
) -> torch.Tensor:
    """Indices of the masks to keep, best score first: (K,) int64, K <= limit.

    logits: (N, h, w) mask logits; scores: (N,) predicted IoU. A mask is kept when its score is
    at least pred_iou_threshold, its stability score (stability_scores) at least
    stability_threshold, it is not empty (logits > mask_threshold somewhere), and no
    better-scoring kept mask's box overlaps its box with an IoU above nms_iou.
    """
    keep = (scores >= pred_iou_threshold).nonzero().flatten()
    if keep.numel():
        stable = stability_scores(logits[keep], mask_threshold, stability_offset)
        keep = keep[stable >= stability_threshold]
    if keep.numel():
        binary = logits[keep] > mask_threshold
        nonempty = binary.flatten(1).any(1)
        keep, binary = keep[nonempty], binary[nonempty]
    if not keep.numel():
        return keep
    survivors = nms(mask_boxes(binary).float(), scores[keep].float(), nms_iou)
    return keep[survivors[:limit]]


class SegmentAnythingProposals(ProposalGenerator):
    """What "sam" and "sam2" share: settings, the point-grid loop, filtering, de-duplication.

    checkpoint: weights file (found as clip_model.resolve_weights_path finds it); required
    unless random_weights. model: the model type; None: read from the checkpoint, else the
    generator's default. max_proposals: most masks per frame. device: "auto", "cuda" or "cpu".
    points_per_side: the prompt grid is points_per_side^2 points; points_per_batch: prompts
    decoded together (memory grows with it). pred_iou_threshold, stability_threshold: least
    predicted IoU and stability score of a kept mask; nms_iou: box IoU above which the
    lower-scoring of two masks is dropped. Masks: (N, H, W) bool on the device, best predicted
    IoU first; weights: their predicted IoU.

    Subclasses name their default model and build their networks (default_model, _guess_model,
    _builder) and wrap their package's encoder and decoder (_encode, _decode, _upscale,
    _valid_size).
    """

    generator = ""
    package = ""
    module = ""

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        model: str | None = None,
        max_proposals: int = 100,
        device: str = "auto",
        points_per_side: int = 16,
        points_per_batch: int = 64,
        pred_iou_threshold: float = 0.88,
        stability_threshold: float = 0.95,
        nms_iou: float = 0.7,
        random_weights: bool = False,
    ) -> None:
        self._configure(
            max_proposals,
            device,
            points_per_side,
            points_per_batch,
            pred_iou_threshold,
            stability_threshold,
            nms_iou,
        )
        import_extra(self.module, self.generator, self.package)
        if checkpoint is not None and random_weights:
            raise ValueError(f"proposal generator {self.generator!r}: checkpoint or random weights")
        if checkpoint is None and not random_weights:
            raise ValueError(
                f"proposal generator {self.generator!r} needs weights: set proposal_checkpoint "
                f"(--proposal-checkpoint) to a {self.package} checkpoint file"
            )
        network, self.model_name = self._load(checkpoint, model or None)
        self._set_network(network)

    @classmethod
    def from_network(cls, network: torch.nn.Module, model_name: str = "custom", **settings):
        """A generator around a network built by the caller (e.g. a small one for tests); the
        settings are __init__'s from max_proposals on."""
        generator = cls.__new__(cls)
        generator._configure(**settings)
        generator.model_name = model_name
        generator._set_network(network)
        return generator

    def _configure(
        self,
        max_proposals: int = 100,
        device: str = "auto",
        points_per_side: int = 16,
        points_per_batch: int = 64,
        pred_iou_threshold: float = 0.88,
        stability_threshold: float = 0.95,
        nms_iou: float = 0.7,
    ) -> None:
        for name, value in (
            ("max_proposals", max_proposals),
            ("points_per_side", points_per_side),
            ("points_per_batch", points_per_batch),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name, value in (
            ("pred_iou_threshold", pred_iou_threshold),
            ("stability_threshold", stability_threshold),
            ("nms_iou", nms_iou),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        self.max_proposals = max_proposals
        self.device = resolve_device(device)
        self.points_per_side = points_per_side
        self.points_per_batch = points_per_batch
        self.pred_iou_threshold = pred_iou_threshold
        self.stability_threshold = stability_threshold
        self.nms_iou = nms_iou

    def _set_network(self, network: torch.nn.Module) -> None:
        self.network = network.to(self.device).eval()
        self.predictor = self._predictor(self.network)

    def _check_fit(
        self, network: torch.nn.Module, state: dict, path: Path, name: str, guessed: str | None
    ) -> None:
        """Loads state into network, or CheckpointMismatchError naming the checkpoint, the model
        asked for and, when it can tell, the model the checkpoint is for."""
        try:
            check_state_dict(network, state, str(path))
        except CheckpointMismatchError as exc:
            hint = f" (it looks like a {guessed} checkpoint)" if guessed else ""
            raise CheckpointMismatchError(
                f"proposal checkpoint {path} does not fit {self.generator} model {name!r}{hint}; "
                f"set proposal_model to the checkpoint's model type. {exc}"
            ) from exc
        network.load_state_dict(state)

    def __call__(self, image: np.ndarray, vocabulary: EncodedVocabulary | None = None) -> Proposals:
        height, width = image.shape[:2]
        with torch.no_grad():
            self._encode(np.ascontiguousarray(image))
            grid = point_grid(self.points_per_side, height, width).to(self.device)
            kept = torch.zeros((0, 1, 1), device=self.device)
            kept_scores = torch.zeros(0, device=self.device)
            for points in grid.split(self.points_per_batch):
                logits, scores = self._decode(points)  # (B, 3, h, w), (B, 3)
                if not kept.numel():
                    kept = logits.new_zeros((0, *logits.shape[-2:]))
                logits = torch.cat([kept, logits.flatten(0, 1)])
                scores = torch.cat([kept_scores, scores.flatten().float()])
                valid_h, valid_w = self._valid_size(logits.shape[-2:])
                keep = select_masks(
                    logits[:, :valid_h, :valid_w],
                    scores,
                    self.pred_iou_threshold,
                    self.stability_threshold,
                    self.nms_iou,
                    self.max_proposals,
                )
                kept, kept_scores = logits[keep], scores[keep]
            if kept_scores.numel():
                masks = self._upscale(kept, (height, width)) > 0.0
            else:
                masks = torch.zeros((0, height, width), dtype=torch.bool, device=self.device)
        return Proposals(masks=masks, weights=kept_scores.clamp(min=1e-6))

    def _load(self, checkpoint: str | Path | None, model: str | None):
        """(network with the checkpoint's weights, or seeded random ones without a checkpoint,
        model name): model, else the model the checkpoint looks like, else default_model."""
        path = state = guessed = None
        if checkpoint is not None:
            path = resolve_weights_path(checkpoint)
            state = read_state_dict(path)
            guessed = self._guess_model(state)
        name = model or guessed or self.default_model
        build = self._builder(name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            network = build()
        if state is not None:
            self._check_fit(network, state, path, name, guessed)
        return network, name

    # What each package provides.
    default_model = ""

    def _guess_model(self, state: dict[str, torch.Tensor]) -> str | None:
        """The model a checkpoint's state dict is for; None if it cannot tell."""
        raise NotImplementedError

    def _builder(self, name: str) -> Callable[[], torch.nn.Module]:
        """A function that builds model `name` (random weights, on the CPU); ValueError for a
        name the package does not know."""
        raise NotImplementedError

    def _predictor(self, network: torch.nn.Module):
        raise NotImplementedError

    def _encode(self, image: np.ndarray) -> None:
        """Runs the image encoder on an (H, W, 3) uint8 RGB image."""
        raise NotImplementedError

    def _decode(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2) (x, y) image pixels -> low-resolution logits (B, 3, h, w) and predicted IoU
        (B, 3)."""
        raise NotImplementedError

    def _valid_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The part (rows, columns) of low-resolution logits of `size` that shows the image."""
        return size

    def _upscale(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(K, h, w) low-resolution logits -> (K, H, W) logits at the image size."""
        raise NotImplementedError


def guess_sam_model(state: dict[str, torch.Tensor]) -> str | None:
    """The SAM 1 model type a state dict is for, from its image encoder's width; None if unknown."""
    weight = state.get("image_encoder.patch_embed.proj.weight")
    return None if weight is None else SAM_EMBED_DIMS.get(int(weight.shape[0]))


def guess_sam2_model(state: dict[str, torch.Tensor]) -> str | None:
    """The SAM 2 model name ("hiera_t", "sam2_hiera_l", ...) a state dict is for, from its Hiera
    trunk's width and depth and from the SAM 2.1 parameters; None if unknown."""
    weight = state.get("image_encoder.trunk.patch_embed.proj.weight")
    if weight is None:
        return None
    prefix = "image_encoder.trunk.blocks."
    blocks = {key[len(prefix) :].split(".")[0] for key in state if key.startswith(prefix)}
    size = SAM2_TRUNKS.get((int(weight.shape[0]), len(blocks)))
    if size is None:
        return None
    return ("hiera_" if "no_obj_embed_spatial" in state else "sam2_hiera_") + size


@register_proposal_generator("sam")
class SamProposalGenerator(SegmentAnythingProposals):
    """Segment Anything (SAM 1) proposals; model: vit_b (default), vit_l or vit_h; checkpoint:
    sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth as Meta publishes them.
    See SegmentAnythingProposals and the module's docstring for the other settings."""

    generator = "sam"
    package = "segment-anything"
    module = "segment_anything"

    default_model = DEFAULT_SAM_MODEL

    def _guess_model(self, state: dict[str, torch.Tensor]) -> str | None:
        return guess_sam_model(state)

    def _builder(self, name: str) -> Callable[[], torch.nn.Module]:
        segment_anything = import_extra("segment_anything", "sam", self.package)
        if name not in SAM_MODELS:
            raise ValueError(f"unknown sam model {name!r}; known: {', '.join(SAM_MODELS)}")
        return segment_anything.sam_model_registry[name]

    def _predictor(self, network: torch.nn.Module):
        from segment_anything import SamPredictor

        return SamPredictor(network)

    def _encode(self, image: np.ndarray) -> None:
        self.predictor.set_image(image)

    def _decode(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        predictor, network = self.predictor, self.network
        coords = predictor.transform.apply_coords_torch(points, predictor.original_size)
        labels = torch.ones((len(points), 1), dtype=torch.int, device=points.device)
        prompts = (coords[:, None], labels)
        sparse, dense = network.prompt_encoder(points=prompts, boxes=None, masks=None)
        return network.mask_decoder(
            image_embeddings=predictor.features,
            image_pe=network.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )

    def _valid_size(self, size: tuple[int, int]) -> tuple[int, int]:
        # The encoder's input is the image resized (long side = img_size) and padded to a square.
        input_h, input_w = self.predictor.input_size
        scale = self.network.image_encoder.img_size
        return -(-input_h * size[0] // scale), -(-input_w * size[1] // scale)

    def _upscale(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        upscaled = self.network.postprocess_masks(logits[:, None], self.predictor.input_size, size)
        return upscaled[:, 0]


@register_proposal_generator("sam2")
class Sam2ProposalGenerator(SegmentAnythingProposals):
    """Segment Anything 2 proposals; model: a name of SAM2_CONFIGS (default hiera_t, i.e.
    configs/sam2.1/sam2.1_hiera_t.yaml; sam2_hiera_t etc. for SAM 2.0 checkpoints) or a config
    path inside the sam2 package ("configs/sam2.1/sam2.1_hiera_l.yaml"); checkpoint:
    sam2.1_hiera_tiny.pt etc. as Meta publishes them. See SegmentAnythingProposals and the
    module's docstring for the other settings."""

    generator = "sam2"
    package = "sam2"
    module = "sam2"

    default_model = DEFAULT_SAM2_MODEL

    def _guess_model(self, state: dict[str, torch.Tensor]) -> str | None:
        return guess_sam2_model(state)

    def _builder(self, name: str) -> Callable[[], torch.nn.Module]:
        build_sam = import_extra("sam2.build_sam", "sam2", self.package)
        config = SAM2_CONFIGS.get(name, name if name.endswith(".yaml") else None)
        if config is None:
            names = ", ".join(n for n in SAM2_CONFIGS if n.count("_") == 1 and n[0] == "h")
            raise ValueError(
                f"unknown sam2 model {name!r}; known: {names}, their sam2.1_/sam2_ forms, or a "
                "config file of the sam2 package such as configs/sam2.1/sam2.1_hiera_t.yaml"
            )

        def build() -> torch.nn.Module:
            try:
                return build_sam.build_sam2(config, None, device="cpu", apply_postprocessing=False)
            except Exception as exc:  # noqa: BLE001 - hydra's errors: a config that is not there
                raise ValueError(f"sam2 model {name!r}: cannot build {config}: {exc}") from exc

        return build

    def _predictor(self, network: torch.nn.Module):
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        return SAM2ImagePredictor(network)

    def _encode(self, image: np.ndarray) -> None:
        self.predictor.set_image(image)
        self._image_size = image.shape[:2]

    def _decode(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        network = self.network
        height, width = self._image_size
        # The encoder's input is the image resized to a square of image_size (aspect not kept).
        scale = points.new_tensor([network.image_size / width, network.image_size / height])
        labels = torch.ones((len(points), 1), dtype=torch.int, device=points.device)
        sparse, dense = network.sam_prompt_encoder(
            points=((points * scale)[:, None], labels), boxes=None, masks=None
        )
        features = self.predictor._features  # what SAM2ImagePredictor's own predict uses
        logits, scores, _, _ = network.sam_mask_decoder(
            image_embeddings=features["image_embed"],
            image_pe=network.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            repeat_image=True,
            high_res_features=features["high_res_feats"],
        )
        return logits, scores

    def _upscale(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(logits[:, None], size, mode="bilinear", align_corners=False)[:, 0]
