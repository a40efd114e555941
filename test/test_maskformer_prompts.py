"""Learned prompt vectors: prompts that spell "a photo of a" give CLIP's own text embedding of
"a photo of a NAME."; prompts of another width are refused."""

from __future__ import annotations

import pytest
import torch

from ovseg_ros.engine.clip_model import load_clip
from ovseg_ros.engine.maskformer.checkpoint import LearnedPrompts
from ovseg_ros.engine.maskformer.learned_prompts import encode_with_learned_prompts


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load_clip("ovseg-tiny-clip", random_weights=True, device="cpu")


def test_prompts_spelling_a_sentence_match_the_text_tower(clip):
    tokens = clip.tokenizer(["a photo of a"])[0]
    end = int(tokens.argmax())
    with torch.no_grad():
        prefix = clip.model.token_embedding(tokens[1:end])
    prompts = LearnedPrompts(prefix=prefix, suffix=None)
    names = ["red circle", "star", "checkerboard background"]
    got = encode_with_learned_prompts(clip, prompts, names)
    expected = clip.encode_texts([f"a photo of a {n}." for n in names])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_suffix_goes_after_the_name(clip):
    tokens = clip.tokenizer(["photo"])[0]
    with torch.no_grad():
        suffix = clip.model.token_embedding(tokens[1:2])
    prompts = LearnedPrompts(prefix=None, suffix=suffix)
    got = encode_with_learned_prompts(clip, prompts, ["star"])
    torch.testing.assert_close(got, clip.encode_texts(["star photo."]), rtol=1e-4, atol=1e-5)


def test_wrong_width_is_refused(clip):
    prompts = LearnedPrompts(prefix=torch.zeros(16, 512), suffix=None)
    with pytest.raises(ValueError, match="width 512"):
        encode_with_learned_prompts(clip, prompts, ["star"])
