"""Vocabulary validation, synonyms, prompt templates, and the text-embedding cache."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from tiny_model import TINY_MODEL

from ovseg_ros.engine.clip_model import encode_text_trimmed, load_clip, text_tower_is_trimmable
from ovseg_ros.engine.prompts import (
    IMAGENET_TEMPLATES,
    SINGLE_TEMPLATES,
    VILD_TEMPLATES,
    fill_template,
    resolve_templates,
)
from ovseg_ros.engine.vocabulary import (
    MAX_NAME_LENGTH,
    VocabularyEncoder,
    parse_class_list,
    split_synonyms,
    validate_class_names,
)


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load_clip(TINY_MODEL, random_weights=True, device="cpu")


class CountingClip:
    """Wraps a ClipModel and records every sentence sent to the text tower."""

    def __init__(self, clip) -> None:
        self.clip = clip
        self.sentences: list[str] = []

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        self.sentences.extend(texts)
        return self.clip.encode_texts(texts)


def test_valid_names_come_back_tidied():
    names = ["  person ", "dining   table", "sofa | couch|settee", "TV"]
    assert validate_class_names(names) == ["person", "dining table", "sofa|couch|settee", "TV"]
    assert split_synonyms("sofa | couch") == ("sofa", "couch")
    assert parse_class_list("person, chair,sofa|couch") == ["person", "chair", "sofa|couch"]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ([], "empty"),
        ("person,chair", "not one string"),
        (["person", ""], "class 1 ('') has an empty name"),
        (["person", "   "], "empty name"),
        (["sofa|", "chair"], "empty name or synonym"),
        (["x" * (MAX_NAME_LENGTH + 1)], f"at most {MAX_NAME_LENGTH}"),
        (["Chair", "table", " chair"], "duplicate class name 'chair': in classes 0 and 2"),
        (["sofa|couch", "Couch"], "in classes 0 and 1"),
        (["sofa|sofa"], "twice in class 0"),
        (["person", 3], "class 1 is not a string"),
    ],
)
def test_invalid_vocabularies_are_refused_with_the_reason(names, message):
    with pytest.raises(ValueError) as error:
        validate_class_names(names)
    assert message in str(error.value)


def test_class_count_limit():
    assert len(validate_class_names([f"class {i}" for i in range(1000)])) == 1000
    with pytest.raises(ValueError, match="1001 classes; at most 1000"):
        validate_class_names([f"class {i}" for i in range(1001)])
    with pytest.raises(ValueError, match="3 classes; at most 2"):
        validate_class_names(["a", "b", "c"], max_classes=2)
    assert len(validate_class_names(["x" * MAX_NAME_LENGTH])) == 1


def test_template_sets():
    assert resolve_templates("single") == SINGLE_TEMPLATES == ("a photo of a {}.",)
    assert len(resolve_templates("imagenet80")) == 80
    assert len(resolve_templates(["vild14"])) == 14
    # The ImageNet set is CLIP's; open_clip ships the same 80 sentences.
    openai = [t("{}") for t in open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES]
    assert list(IMAGENET_TEMPLATES) == openai
    assert VILD_TEMPLATES[1] == "This is a photo of a {}"
    mixed = resolve_templates(["single", "a {} on the floor.", "a photo of a {}."])
    assert mixed == ("a photo of a {}.", "a {} on the floor.")
    assert fill_template("a {} of {braces}", "x{}") == "a x{} of {braces}"


@pytest.mark.parametrize(
    ("templates", "message"),
    [
        ([], "no prompt templates"),
        ("vild", "neither a template set"),
        (["a photo"], "neither a template set"),
        (["{} and {}"], "more than one"),
        ([3], "not a string"),
        ([f"{i} {{}}" for i in range(300)], "at most 256"),
    ],
)
def test_bad_templates_are_refused(templates, message):
    with pytest.raises(ValueError) as error:
        resolve_templates(templates)
    assert message in str(error.value)


def test_embedding_is_the_normalised_mean_of_normalised_template_embeddings(clip):
    templates = ("a photo of a {}.", "a {} in the scene.")
    vocabulary = VocabularyEncoder(clip).encode(["circle", "square"], templates)
    assert vocabulary.class_names == ["circle", "square"]
    assert vocabulary.templates == templates
    assert vocabulary.text_embeddings.shape == (2, clip.embed_dim)
    assert vocabulary.text_embeddings.dtype == torch.float32
    for row, name in enumerate(["circle", "square"]):
        sentences = [clip.encode_texts([t.replace("{}", name)])[0] for t in templates]
        expected = F.normalize(torch.stack(sentences).mean(0), dim=0)
        torch.testing.assert_close(vocabulary.text_embeddings[row], expected, atol=1e-5, rtol=0)


def test_synonyms_average_their_embeddings(clip):
    encoder = VocabularyEncoder(clip)
    vocabulary = encoder.encode(["sofa|couch", "chair"], "single")
    assert vocabulary.class_names == ["sofa", "chair"]
    assert vocabulary.synonyms == (("sofa", "couch"), ("chair",))
    sofa, couch = clip.encode_texts(["a photo of a sofa.", "a photo of a couch."])
    expected = F.normalize(sofa + couch, dim=0)
    torch.testing.assert_close(vocabulary.text_embeddings[0], expected, atol=1e-5, rtol=0)


def test_changing_the_vocabulary_encodes_only_new_names(clip):
    counting = CountingClip(clip)
    encoder = VocabularyEncoder(counting)
    first = encoder.encode(["circle", "square"], "single")
    assert counting.sentences == ["a photo of a circle.", "a photo of a square."]
    counting.sentences.clear()
    second = encoder.encode(["square", "star", "circle"], "single")
    assert counting.sentences == ["a photo of a star."]
    torch.testing.assert_close(second.text_embeddings[0], first.text_embeddings[1])
    counting.sentences.clear()
    encoder.encode(["square"], ["a {} shape."])  # other templates: a new cache entry
    assert counting.sentences == ["a square shape."]
    assert encoder.cache_size == 4
    assert (first.version, second.version) == (1, 2)


def test_version_increases_with_every_vocabulary(clip):
    encoder = VocabularyEncoder(clip)
    versions = [encoder.encode(["a", "b"], "single").version for _ in range(3)]
    assert versions == [1, 2, 3]


def test_a_thousand_classes_encode(clip):
    encoder = VocabularyEncoder(clip, prompts_per_batch=300)
    vocabulary = encoder.encode([f"thing {i}" for i in range(1000)], "single")
    assert vocabulary.text_embeddings.shape == (1000, clip.embed_dim)
    norms = vocabulary.text_embeddings.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(1000), atol=1e-5, rtol=0)


def test_encoder_refuses_empty_and_oversized_vocabularies(clip):
    encoder = VocabularyEncoder(clip, max_classes=3)
    with pytest.raises(ValueError, match="empty"):
        encoder.encode([], "single")
    with pytest.raises(ValueError, match="at most 3"):
        encoder.encode(["a", "b", "c", "d"], "single")


@pytest.mark.parametrize("model_name", [TINY_MODEL, "ViT-B-16"])
def test_trimmed_text_tower_equals_open_clips_encode_text(model_name):
    """Prompts of different lengths in one batch, the longest shorter than the context."""
    torch.manual_seed(0)
    model = load_clip(model_name, random_weights=True, device="cpu").model
    assert text_tower_is_trimmable(model)
    tokens = open_clip.get_tokenizer(model_name)(["a cat.", "a photo of a dining table.", "x"])
    assert int(tokens.argmax(dim=-1).max()) + 1 < tokens.shape[1]
    with torch.inference_mode():
        full = model.encode_text(tokens)
        trimmed = encode_text_trimmed(model, tokens)
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5)


def test_untrimmable_text_tower_is_not_trimmed(clip):
    """A text tower pooled elsewhere than at the end-of-text token keeps open_clip's forward."""
    clip.model.text_pool_type = "last"
    try:
        assert not text_tower_is_trimmable(clip.model)
        sentences = ["a photo of a circle.", "a red shape."]
        with torch.inference_mode():
            expected = F.normalize(clip.model.encode_text(clip.tokenizer(sentences)), dim=-1)
        torch.testing.assert_close(clip.encode_texts(sentences), expected)
    finally:
        clip.model.text_pool_type = "argmax"
