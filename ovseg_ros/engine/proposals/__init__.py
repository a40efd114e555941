"""Stage 1: class-agnostic mask proposals.

`build_proposal_generator(name, **settings)` makes any registered generator; "superpixel"
(training-free hierarchical grouping of superpixels, grouping.py) is the default; "hierarchy"
(the same idea in torch on the CLIP device, with border strength, hierarchy.py); "maskformer"
(the paper's proposal network, maskformer.py) needs a checkpoint; "sam" and "sam2" (Segment
Anything 1 and 2, sam.py) need the optional extra `pip install "ovseg_ros[sam]"` and a checkpoint.
"""

from ovseg_ros.engine.options import DEFAULT_PROPOSAL_GENERATOR
from ovseg_ros.engine.proposals import grouping, hierarchy, maskformer, sam
from ovseg_ros.engine.proposals.base import (
    ProposalGenerator,
    Proposals,
    build_proposal_generator,
    proposal_generator_names,
    register_proposal_generator,
)

__all__ = [
    "DEFAULT_PROPOSAL_GENERATOR",
    "ProposalGenerator",
    "Proposals",
    "build_proposal_generator",
    "grouping",
    "hierarchy",
    "maskformer",
    "proposal_generator_names",
    "register_proposal_generator",
    "sam",
]
