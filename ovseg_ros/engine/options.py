"""Names and defaults of the engine's settings, importable without torch.

The `ovseg` command builds its argument parser (and answers --help) from these alone, so that
--help does not wait for torch. The engine modules that own each setting use the same values;
test_cli.py checks that they agree.
"""

TINY_MODEL = "ovseg-tiny-clip"
"""The project's own small CLIP, trained on the toy world (tools/train_tiny_clip.py)."""

DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "fp16", "bf16", "fp32")

CLASSIFIERS = ("crop", "dense")
"""Stage-2 classifiers SegmenterConfig.classifier may name."""

PROPOSAL_GENERATORS = ("hierarchy", "maskformer", "sam", "sam2", "superpixel")
"""Registered stage-1 generators (proposals.proposal_generator_names())."""

DEFAULT_PROPOSAL_GENERATOR = "superpixel"
TRAINING_FREE_GENERATORS = ("hierarchy", "superpixel")
"""Generators without weights: the node benchmark (`ovseg bench --node`) can run these."""

DEFAULT_PROPOSAL_MODEL = ""
"""The model type of a "sam" / "sam2" generator (vit_b, vit_l, vit_h / hiera_t, hiera_s,
hiera_b+, hiera_l, ...); empty: read from the proposal checkpoint (vit_b / hiera_t with random
weights)."""

SAM_GENERATORS = ("sam", "sam2")
"""The generators that take a proposal model."""


def check_proposal_model(generator: str, model: str | None) -> None:
    """ValueError when a proposal model is given for a generator that takes none."""
    if model and generator not in SAM_GENERATORS:
        raise ValueError(
            f"proposal generator {generator!r} takes no proposal model (only "
            f"{' and '.join(SAM_GENERATORS)} do)"
        )


DEFAULT_CLASSIFIER = "crop"
DEFAULT_MASK_THRESHOLD = 0.5
DEFAULT_MIN_PROPOSAL_AREA = 16
DEFAULT_UNLABELED_THRESHOLD = 0.0
DEFAULT_PROCESSING_SIZE = "640"
"""SegmenterConfig's defaults of the same names. processing_size (resize.ProcessingSize): the long
side at most 640, so VGA frames go through as they are, 1280x720 and 1920x1080 ones are processed
at 640x360 (see the README's latency table)."""

PAPER_SETTINGS = (
    "coco-stuff-156",
    "coco-stuff-156-single",
    "coco-stuff-156-vild",
    "coco-stuff-156-imagenet",
    "voc-15",
    "voc-15-single",
    "voc-20",
    "ade20k-150",
    "pcontext-59",
)
"""Names of paper.PAPER_SETTINGS (the reference's inference settings)."""
DATASET_PROTOCOLS = (
    "ade20k-150",
    "pcontext-59",
    "voc-20",
    "voc-15",
    "coco-stuff-171",
    "coco-stuff-156",
)
"""Names of dataset_protocols.DATASET_PROTOCOLS (the reference's evaluation datasets)."""
DEFAULT_ENSEMBLE_WEIGHT = 0.8
DEFAULT_REJECTION = 0.0
"""SegmenterConfig.rejection: open-set rejection strength (0 = off). Off by default: its
calibration is fitted for the bundled tiny CLIP only (rejection.py), not for real CLIP weights."""
RECOMMENDED_REJECTION = 0.5
"""The strength the open-set evaluation recommends (the calibrated equal-odds point; README,
"Open-set rejection")."""
