"""The exact token string EasyRef was trained with (README steps 1 and 2).

The string is built here, character by character, instead of through a tokenizer's bundled chat
template, so it is identical across transformers versions and tokenizer files.
"""

from __future__ import annotations

from collections.abc import Sequence

# Step 1: the instruction, verbatim from the authors' code; the user's prompt follows it.
INSTRUCTION = (
    "Visualize a scene that closely resembles the provided images, capturing the essence and "
    "details described in this prompt:\n"
)

# Step 2: the standard Qwen2-VL chat layout, including the default system turn.
SYSTEM_TURN = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
USER_START = "<|im_start|>user\n"
ASSISTANT_START = "<|im_end|>\n<|im_start|>assistant\n"

IMAGE_PAD = "<|image_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
# One slot per reference image; no "Picture k:" labels (the authors' code never added them).
IMAGE_SLOT = VISION_START + IMAGE_PAD + VISION_END

# Special tokens the string relies on; each must be a single token of the tokenizer.
REQUIRED_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", VISION_START, VISION_END, IMAGE_PAD)


def build_text(num_images: int, prompt: str) -> str:
    """The full token string with one (not yet expanded) ``<|image_pad|>`` per image.

    ``build_text(1, "")`` is the string of the unconditional branch (bare instruction prefix).
    """
    if num_images < 1:
        raise ValueError("EasyRef needs at least one reference image.")
    return SYSTEM_TURN + USER_START + IMAGE_SLOT * num_images + INSTRUCTION + prompt + ASSISTANT_START


def expand_image_pads(token_ids: Sequence[int], image_pad_id: int, tokens_per_image: Sequence[int]) -> list[int]:
    """Repeat the k-th ``<|image_pad|>`` id ``tokens_per_image[k]`` times (one id per merged visual token).

    Equivalent to the processor's expansion of the pad in the text before tokenisation: the pad is a
    special token, so the text around it tokenises the same either way.
    """
    pads = [i for i, t in enumerate(token_ids) if t == image_pad_id]
    if len(pads) != len(tokens_per_image):
        raise ValueError(
            f"The token string holds {len(pads)} image pad tokens but {len(tokens_per_image)} images were given."
        )
    out: list[int] = []
    k = 0
    for t in token_ids:
        if t == image_pad_id:
            out.extend([image_pad_id] * int(tokens_per_image[k]))
            k += 1
        else:
            out.append(int(t))
    return out
