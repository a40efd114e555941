"""Text embeddings through learned prompt vectors (the reference's LearnablePromptExtractor).

A class name's sentence is built in the text tower's token-embedding space as
    [start] prefix_1 .. prefix_P [name tokens] suffix_1 .. suffix_S [.] [end] [pad ...]
and run through the tower; the embedding is read at the end token, projected and normalised.
The start, ".", end and pad embeddings come with the prompts when the checkpoint records them,
else from the CLIP model's own token embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ovseg_ros.engine.clip_model import ClipModel
from ovseg_ros.engine.maskformer.checkpoint import LearnedPrompts


def _signal_embeddings(clip: ClipModel) -> dict[str, torch.Tensor]:
    """(1, W) token embeddings of the start token, ".", the end token and padding."""
    tokens = clip.tokenizer(["X."])[0].to(clip.device)  # start, X, ., end, pad ...
    embedded = clip.model.token_embedding(tokens)
    return {
        "start": embedded[0:1],
        "dot": embedded[2:3],
        "end": embedded[3:4],
        "pad": embedded[4:5],
    }


@torch.inference_mode()
def encode_with_learned_prompts(
    clip: ClipModel, prompts: LearnedPrompts, names: Sequence[str]
) -> torch.Tensor:
    """names: C class names -> (C, D) float32 unit-norm text embeddings on the CLIP device.

    Raises ValueError when the prompt vectors do not fit the text tower's width or a sentence
    does not fit its context length.
    """
    model = clip.model
    width = model.token_embedding.weight.shape[1]
    context = model.positional_embedding.shape[0]
    signals = _signal_embeddings(clip)
    for key in signals:
        recorded = getattr(prompts, key)
        if recorded is not None:
            signals[key] = recorded.to(clip.device, signals[key].dtype)
    parts = [p for p in (prompts.prefix, prompts.suffix) if p is not None]
    for part in [*parts, *signals.values()]:
        if part.shape[-1] != width:
            raise ValueError(
                f"learned prompt vectors have width {part.shape[-1]}, but {clip.name}'s text "
                f"tower takes {width}; use the CLIP model the prompts were trained with"
            )
    prefix = signals["start"]
    if prompts.prefix is not None:
        prefix = torch.cat([prefix, prompts.prefix.to(clip.device, prefix.dtype)])
    suffix = torch.cat([signals["dot"], signals["end"]])
    if prompts.suffix is not None:
        suffix = torch.cat([prompts.suffix.to(clip.device, suffix.dtype), suffix])

    tokens = clip.tokenizer(list(names)).to(clip.device)
    sentences, end_positions = [], []
    for row in tokens:
        end = int(row.argmax())  # the end token has the largest id
        name = model.token_embedding(row[1:end])
        length = len(prefix) + len(name) + len(suffix)
        if length > context:
            raise ValueError(
                f"a prompted sentence of {length} tokens exceeds the context {context}"
            )
        padding = signals["pad"].expand(context - length, -1)
        sentences.append(torch.cat([prefix, name, suffix, padding]))
        end_positions.append(length - 1)
    x = torch.stack(sentences) + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    x = x[torch.arange(len(end_positions)), torch.tensor(end_positions)]
    projection = model.text_projection
    x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return F.normalize(x.float(), dim=-1)
