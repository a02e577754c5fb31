"""RefDrop's ComfyUI glue: one call per node (inputs in, patched clone out), over the one Eq. 5 / Eq. 6 core.

- :func:`apply_refdrop` (Apply RefDrop): in-batch references, SD UNets and image diffusion transformers;
- :func:`apply_reference_image` (Apply RefDrop (Reference Image)): your own pictures as references;
- :func:`apply_svd_temporal_refdrop` (SVD Temporal RefDrop): a reference frame on Stable Video Diffusion;
- :func:`apply_temporal_refdrop` (Temporal RefDrop): a reference frame on video diffusion transformers;
- :func:`encode_prompt_batch` (RefDrop Prompt Batch): one prompt per image.

Modules: ``settings`` (node names, parsers, frozen settings), ``blocks`` (excluded blocks), ``unet`` (attn1
replaces), ``dit`` (policies for the shared DiT override), ``in_batch``, ``reference_image``, ``svd``,
``video_dit``, ``prompt_batch``.
"""

from .in_batch import apply_refdrop
from .prompt_batch import encode_prompt_batch
from .reference_image import apply_reference_image
from .svd import apply_svd_temporal_refdrop
from .video_dit import apply_temporal_refdrop

__all__ = [
    "apply_refdrop",
    "apply_reference_image",
    "apply_svd_temporal_refdrop",
    "apply_temporal_refdrop",
    "encode_prompt_batch",
]
