"""RefDrop Prompt Batch's glue: one prompt per image of the latent batch, as one batched CONDITIONING."""

from __future__ import annotations

import math

import torch


def encode_prompt_batch(clip, prompts: str) -> list:
    """One CONDITIONING whose row i is line i of ``prompts`` (empty lines ignored)."""
    lines = [line.strip() for line in prompts.splitlines() if line.strip()]
    if not lines:
        raise ValueError("RefDrop Prompt Batch: write at least one prompt (one line per image).")
    if clip is None:
        raise RuntimeError("RefDrop Prompt Batch: the CLIP input is empty (the checkpoint has no text encoder).")
    encoded = []
    for line in lines:
        cond, pooled = clip.encode_from_tokens(clip.tokenize(line), return_pooled=True)
        encoded.append((cond, {"pooled_output": pooled} if pooled is not None else {}))
    return batch_conditioning(encoded)


def batch_conditioning(encoded: list[tuple[torch.Tensor, dict]]) -> list:
    """Stack per-image (cond [1, L_i, C], extras) into one CONDITIONING with batch rows in order.

    Prompts of different token lengths are repeated to the least common multiple of the lengths, as
    ComfyUI does when it batches conditionings: repeating a whole key/value sequence leaves
    cross-attention unchanged, so every row still sees exactly its own prompt.
    """
    target = math.lcm(*(cond.shape[1] for cond, _ in encoded))
    rows = [cond.repeat(1, target // cond.shape[1], 1) for cond, _ in encoded]
    extras: dict = {}
    pooled = [extra.get("pooled_output") for _, extra in encoded]
    if all(p is not None for p in pooled):
        extras["pooled_output"] = torch.cat(pooled, dim=0)
    return [[torch.cat(rows, dim=0), extras]]
