"""The EASYREF_EMBEDS value: conditional and unconditional reference tokens plus metadata.

Saved as safetensors (tensors ``cond`` and ``uncond``, float32) with string metadata; a file made
with another checkpoint is refused by :func:`check_fingerprint`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

FORMAT = "easyref-embeds"
FORMAT_VERSION = "1"


class EmbedsFileError(ValueError):
    """An embeds file is not in this pack's format, or belongs to another checkpoint."""


@dataclass(frozen=True)
class EasyRefEmbeds:
    cond: torch.Tensor  # [1, 64, cross_dim] reference tokens of the group
    uncond: torch.Tensor  # [1, 64, cross_dim] black image + bare instruction (negative branch)
    num_references: int
    prompt: str
    fingerprint: str  # the checkpoint file's sha256 (see checkpoint.file_fingerprint)
    checkpoint_name: str = ""

    def __post_init__(self):
        if self.cond.dim() != 3 or self.cond.shape[0] != 1 or self.cond.shape != self.uncond.shape:
            raise ValueError(
                f"EasyRef embeds must be two tensors of shape [1, tokens, dim]; got {tuple(self.cond.shape)} and "
                f"{tuple(self.uncond.shape)}."
            )


def save_embeds(embeds: EasyRefEmbeds, path: str) -> None:
    from safetensors.torch import save_file

    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "num_references": str(int(embeds.num_references)),
        "prompt": embeds.prompt,
        "fingerprint": embeds.fingerprint,
        "checkpoint_name": embeds.checkpoint_name,
    }
    tensors = {
        "cond": embeds.cond.detach().to("cpu", torch.float32).contiguous(),
        "uncond": embeds.uncond.detach().to("cpu", torch.float32).contiguous(),
    }
    save_file(tensors, path, metadata=metadata)


def load_embeds(path: str) -> EasyRefEmbeds:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            keys = set(f.keys())
            if metadata.get("format") != FORMAT or not {"cond", "uncond"} <= keys:
                raise EmbedsFileError(f"{path} is not an EasyRef embeds file (made by 'Save EasyRef Embeds').")
            cond, uncond = f.get_tensor("cond"), f.get_tensor("uncond")
    except EmbedsFileError:
        raise
    except Exception as e:
        raise EmbedsFileError(f"{path} could not be read as a safetensors file: {e}") from e
    if metadata.get("format_version") != FORMAT_VERSION:
        raise EmbedsFileError(
            f"{path} has format version {metadata.get('format_version')}; this pack reads {FORMAT_VERSION}."
        )
    return EasyRefEmbeds(
        cond=cond,
        uncond=uncond,
        num_references=int(metadata.get("num_references", "0")),
        prompt=metadata.get("prompt", ""),
        fingerprint=metadata.get("fingerprint", ""),
        checkpoint_name=metadata.get("checkpoint_name", ""),
    )


def check_fingerprint(embeds: EasyRefEmbeds, fingerprint: str, checkpoint_name: str = "") -> None:
    """Refuse embeds made with another EasyRef checkpoint than the loaded one."""
    if embeds.fingerprint != fingerprint:
        made = embeds.checkpoint_name or "another checkpoint"
        raise EmbedsFileError(
            "These EasyRef embeds were made with a different EasyRef checkpoint "
            f"({made}, {embeds.fingerprint[:19]}...) than the loaded one ({checkpoint_name or 'loaded'}, "
            f"{fingerprint[:19]}...). Encode the references again with the loaded checkpoint."
        )


def describe(embeds: EasyRefEmbeds) -> str:
    return json.dumps(
        {"num_references": embeds.num_references, "prompt": embeds.prompt, "checkpoint": embeds.checkpoint_name}
    )
