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

PROPOSAL_GENERATORS = ("maskformer", "superpixel")
"""Registered stage-1 generators (proposals.proposal_generator_names())."""

DEFAULT_PROPOSAL_GENERATOR = "superpixel"

DEFAULT_CLASSIFIER = "crop"
DEFAULT_MASK_THRESHOLD = 0.5
DEFAULT_MIN_PROPOSAL_AREA = 16
DEFAULT_UNLABELED_THRESHOLD = 0.0
DEFAULT_MAX_IMAGE_SIDE = 640
"""SegmenterConfig's defaults of the same names. max_image_side: VGA frames go through as they
are, 1280x720 and 1920x1080 ones are processed at 640x360 (see the README's latency table)."""
