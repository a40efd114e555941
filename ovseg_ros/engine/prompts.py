"""Prompt templates that turn a class name into sentences for the CLIP text tower.

A template is a string with exactly one "{}" where the class name goes. A class's text embedding
is the normalised mean of its templates' normalised embeddings (see vocabulary.py).

Named sets: "single" (one sentence), "sculpture" (the reference implementation's one-sentence
setting), "imagenet80" (the 80 sentences CLIP used for ImageNet zero-shot classification),
"vild14" (the 14 scene-style sentences of ViLD, the paper's default).

LEARNED ("learned") is not a template: it asks for the prompt vectors a zsseg checkpoint learned
(engine/maskformer/learned_prompts.py) and stands alone.
"""

from __future__ import annotations

from collections.abc import Sequence

SINGLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
SCULPTURE_TEMPLATES: tuple[str, ...] = ("a sculpture of a {}.",)
"""The reference's PREDEFINED_PROMPT_TEMPLATES (its single-template configs)."""
LEARNED = "learned"
"""Templates value naming a checkpoint's learned prompt vectors instead of sentences."""

IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

VILD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "single": SINGLE_TEMPLATES,
    "sculpture": SCULPTURE_TEMPLATES,
    "imagenet80": IMAGENET_TEMPLATES,
    "vild14": VILD_TEMPLATES,
}
"""Named template sets, selectable by name wherever templates are configured."""

MAX_TEMPLATES = 256


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """Set names and/or templates -> the templates, in order, duplicates dropped.

    templates: one set name ("single", "sculpture", "imagenet80", "vild14"), or a list whose
    items are set names or templates with exactly one "{}" each (e.g. ["vild14", "a {} on the
    floor."]); or LEARNED alone, returned as (LEARNED,).
    Raises ValueError for an empty list, an unknown set name, a template without exactly one
    "{}", LEARNED beside templates, or more than MAX_TEMPLATES templates in all.
    """
    items = [templates] if isinstance(templates, str) else list(templates)
    if not items:
        raise ValueError(
            f"no prompt templates given; name a set ({', '.join(TEMPLATE_SETS)}) or give "
            "templates such as 'a photo of a {}.'"
        )
    if LEARNED in items:
        if len(items) > 1:
            raise ValueError(f"{LEARNED!r} (learned prompt vectors) cannot be mixed with templates")
        return (LEARNED,)
    resolved: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"prompt template {item!r} is not a string")
        if item in TEMPLATE_SETS:
            resolved.extend(TEMPLATE_SETS[item])
        elif item.count("{}") == 1:
            resolved.append(item)
        elif "{}" in item:
            raise ValueError(f"prompt template {item!r} has more than one '{{}}'")
        else:
            raise ValueError(
                f"{item!r} is neither a template set ({', '.join(TEMPLATE_SETS)}), "
                f"{LEARNED!r}, nor a template with one '{{}}' for the class name"
            )
    unique = tuple(dict.fromkeys(resolved))
    if len(unique) > MAX_TEMPLATES:
        raise ValueError(f"{len(unique)} prompt templates given; at most {MAX_TEMPLATES} allowed")
    return unique


def fill_template(template: str, name: str) -> str:
    """The sentence of one template for one class name (a plain substitution, braces in names
    are kept as they are)."""
    return template.replace("{}", name)
