"""The attn2 replace object that adds EasyRef's reference branch (decoupled cross-attention) to a ComfyUI UNet.

One :class:`DecoupledCrossAttention` per attn2 key. It computes the text attention (or calls the replace that was
registered before it, ``inner``) and adds every stacked branch whose sigma window contains the current sigma:

    out = Attn(Q, K_text, V_text) + sum_i branch_i(out, q, k, v, extra_options, **kwargs_i)

Branches follow the IPAdapter pack's protocol (``add(callback, **kwargs)`` with ``sigma_start`` / ``sigma_end`` in
the kwargs), so an IPAdapter patch applied after ours joins this object, and an EasyRef branch joins an
IPAdapter object that was there first. An :class:`EasyRefBranch` is one Apply EasyRef node at one layer: the
layer's reference K/V projections (held by a :class:`ReferenceProjections` module that ComfyUI loads with the
UNet through ``models()``), the group's conditional/unconditional reference tokens, the weight and the mask.
"""

from __future__ import annotations

import copy

import comfy.ops
import torch

from ..attention_patches.decoupled import chunk_kinds, decoupled_reference_term, mask_for_tokens
from .attention_calls import FallbackNotice, plain_attention
from .step_window import in_sigma_window

ALWAYS = (float("inf"), 0.0)  # (sigma_start, sigma_end) of a branch without a step window


class ReferenceProjections(torch.nn.Module):
    """to_k_ip / to_v_ip (Linear cross_dim -> layer width, no bias) of every attn2 layer, keyed by layer name.

    ComfyUI's manual-cast Linear casts the weights to the input's device and dtype at use, so the module also works
    while ComfyUI keeps it (partly) offloaded in low-VRAM mode. It is wrapped in a ModelPatcher by the node.
    """

    def __init__(self, weights: dict[str, tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype | None = None):
        super().__init__()
        self.to_k_ip = torch.nn.ModuleDict()
        self.to_v_ip = torch.nn.ModuleDict()
        for name, (k_weight, v_weight) in weights.items():
            self.to_k_ip[name] = self._linear(k_weight, dtype)
            self.to_v_ip[name] = self._linear(v_weight, dtype)

    @staticmethod
    def _linear(weight: torch.Tensor, dtype: torch.dtype | None) -> torch.nn.Module:
        out_features, in_features = weight.shape
        layer = comfy.ops.manual_cast.Linear(in_features, out_features, bias=False, device="meta")
        layer.weight = torch.nn.Parameter(weight.detach().to(dtype=dtype or weight.dtype), requires_grad=False)
        return layer

    def project(self, name: str, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_k_ip · R, W_v_ip · R) of layer ``name`` for reference tokens R (1, T, cross_dim)."""
        return self.to_k_ip[name](tokens), self.to_v_ip[name](tokens)


def fallback_notice(node_name: str = "Apply EasyRef") -> FallbackNotice:
    """The once-per-node warning for attn2 calls whose batch layout the reference branch cannot map."""
    return FallbackNotice(node_name, "the reference branch is skipped for such attention calls (reported once).")


def token_grid(tokens: int, extra_options: dict) -> tuple[int, int] | None:
    """(h, w) of the feature map behind ``tokens`` query tokens: from activations_shape, else from the latent."""
    activations = extra_options.get("activations_shape")
    if activations is not None and len(activations) == 4 and activations[2] * activations[3] == tokens:
        return int(activations[2]), int(activations[3])
    original = extra_options.get("original_shape")
    if original is not None and len(original) == 4:
        height, width = int(original[2]), int(original[3])
        for factor in (1, 2, 4, 8, 16, 32, 64):
            h, w = -(-height // factor), -(-width // factor)
            if h * w == tokens:
                return h, w
    return None


class EasyRefBranch:
    """One Apply EasyRef node at one attn2 layer; called as ``branch(out, q, k, v, extra_options, **kwargs)``.

    Returns the reference term weight * Attn(Q, W_k_ip·R, W_v_ip·R) (masked), to be added to the text
    attention output. Positive chunks use the conditional reference tokens, negative chunks the unconditional
    ones (``cond_or_uncond``). Nothing is stored between calls.
    """

    def __init__(self, projections, layer, cond, uncond, weight, mask=None, notice=None):
        self.projections: ReferenceProjections = projections
        self.layer: str = layer
        self.tokens = {0: cond, 1: uncond}
        self.weight = float(weight)
        self.mask = mask
        self.notice = notice or fallback_notice()

    def __call__(self, out, q, k, v, extra_options, **kwargs):
        kinds = chunk_kinds(q.shape[0], extra_options.get("cond_or_uncond"))
        if kinds is None:
            self.notice.report(
                f"{q.shape[0]} rows do not split into the guidance chunks {extra_options.get('cond_or_uncond')}"
            )
            return torch.zeros_like(out)
        keys, values = {}, {}
        for kind in set(kinds):
            tokens = self.tokens[kind].to(device=q.device, dtype=q.dtype)
            keys[kind], values[kind] = self.projections.project(self.layer, tokens)
        token_mask = None
        if self.mask is not None:
            grid = token_grid(q.shape[1], extra_options)
            if grid is None:
                self.notice.report(f"the mask could not be matched to {q.shape[1]} attention tokens")
                return torch.zeros_like(out)
            token_mask = mask_for_tokens(self.mask.to(q.device), q.shape[0] // len(kinds), grid)

        def attention(query, key, value):
            return plain_attention(query, key, value, extra_options)

        return decoupled_reference_term(q, keys, values, kinds, self.weight, attention, token_mask).to(out.dtype)

    def to(self, device_or_dtype):
        """Small tensors (reference tokens, mask) follow the device; the projections are ComfyUI's to move."""
        if isinstance(device_or_dtype, (torch.device, str)):
            self.tokens = {kind: t.to(device_or_dtype) for kind, t in self.tokens.items()}
            if self.mask is not None:
                self.mask = self.mask.to(device_or_dtype)
        return self


def _active(extra_options: dict, kwargs: dict) -> bool:
    return in_sigma_window(extra_options, kwargs.get("sigma_start", ALWAYS[0]), kwargs.get("sigma_end", ALWAYS[1]))


class DecoupledCrossAttention:
    """attn2 replace: text attention (``inner`` replace, or plain) plus every stacked branch in its sigma window.

    ``callback`` / ``kwargs`` are parallel lists, as in the IPAdapter pack's object, so that pack's ``add`` calls
    and ours interoperate. ``models()`` hands ComfyUI the ModelPatchers of the EasyRef branches' projections so
    they are loaded and offloaded together with the UNet.
    """

    def __init__(self, inner=None):
        self.inner = inner
        self.callback: list = []
        self.kwargs: list[dict] = []

    def add(self, callback, **kwargs):
        """IPAdapter protocol: stack ``callback(out, q, k, v, extra_options, **kwargs)`` (sigma_start >= sigma >= sigma_end)."""
        self.callback.append(callback)
        self.kwargs.append(kwargs)

    def __call__(self, q, k, v, extra_options):
        out = self.inner(q, k, v, extra_options) if self.inner is not None else plain_attention(q, k, v, extra_options)
        for callback, kwargs in zip(self.callback, self.kwargs, strict=True):
            if _active(extra_options, kwargs):
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out

    def fork(self) -> DecoupledCrossAttention:
        """A copy with its own branch lists (for a new model clone; the original object stays as it was)."""
        forked = DecoupledCrossAttention(self.inner)
        forked.callback, forked.kwargs = list(self.callback), list(self.kwargs)
        return forked

    # --- ComfyUI patch protocol -------------------------------------------------------------------
    def to(self, device_or_dtype):
        if self.inner is not None and hasattr(self.inner, "to"):
            self.inner = self.inner.to(device_or_dtype)
        for callback in self.callback:
            if isinstance(callback, EasyRefBranch):
                callback.to(device_or_dtype)
        return self

    def models(self):
        found = list(self.inner.models()) if self.inner is not None and hasattr(self.inner, "models") else []
        for kwargs in self.kwargs:
            patcher = kwargs.get("easyref_projections")
            if patcher is not None and patcher not in found:
                found.append(patcher)
        return found

    def cleanup(self):
        if self.inner is not None and hasattr(self.inner, "cleanup"):
            self.inner.cleanup()

    def __deepcopy__(self, memo):
        return self


def fork_foreign(existing):
    """A copy of another pack's add-protocol object whose branch lists are its own (so ``add`` does not change
    the model it came from). Falls back to the object itself when it cannot be copied."""
    try:
        forked = copy.copy(existing)
        for name, value in vars(forked).items():
            if isinstance(value, list):
                setattr(forked, name, list(value))
            elif isinstance(value, dict):
                setattr(forked, name, dict(value))
        return forked
    except TypeError:
        return existing


def attach(existing, branch: EasyRefBranch, kwargs: dict):
    """The attn2 object to register for one key: ``existing`` (what was registered before) joined or chained.

    - nothing there: a new DecoupledCrossAttention;
    - ours, or another object with an IPAdapter-style ``add``: a fork of it, with the branch added through ``add``;
    - any other replace: a new DecoupledCrossAttention that chains it as its text attention.
    """
    if existing is None:
        target = DecoupledCrossAttention()
    elif isinstance(existing, DecoupledCrossAttention):
        target = existing.fork()
    elif callable(getattr(existing, "add", None)):
        target = fork_foreign(existing)
    else:
        target = DecoupledCrossAttention(inner=existing)
    target.add(branch, **kwargs)
    return target
