"""The attn2 replace object that adds EasyRef's reference branch (decoupled cross-attention) to a ComfyUI UNet.

One :class:`DecoupledCrossAttention` per attn2 key. It computes the text attention (or calls the replace that was
registered before it, ``inner``) and adds every stacked branch whose sigma window contains the current sigma:

    out = Attn(Q, K_text, V_text) + sum_i branch_i(out, q, k, v, extra_options, **kwargs_i)

Branches follow the IPAdapter pack's protocol (``add(callback, **kwargs)`` with ``sigma_start`` / ``sigma_end`` in
the kwargs), so an IPAdapter patch applied after ours joins this object, and an EasyRef branch joins an
IPAdapter object that was there first. An :class:`EasyRefBranch` is one Apply EasyRef node at one layer: the
layer's reference K/V projections (held by a :class:`ReferenceProjections` module that ComfyUI loads with the
UNet as an additional model, see ``easyref_glue``), the group's conditional/unconditional reference tokens, the
weight and the mask.

Model clones never share an attn2 object that carries EasyRef branches, so a pack that ``add``s to the object it
finds on its clone (IPAdapter mutates it in place) cannot change the model it cloned: on ComfyUI versions whose
``clone()`` shares objects (0.30.0 copies dicts and lists only), the ``CallbacksMP.ON_CLONE`` callback
:func:`fork_on_clone` gives the clone its own forks; on versions that deep-copy ``model_options`` (0.3.64),
``__deepcopy__`` forks.
"""

from __future__ import annotations

import copy

import comfy.ops
import comfy.patcher_extension
import torch

from ..attention_patches.decoupled import chunk_kinds, decoupled_reference_term, mask_for_tokens
from .attention_calls import FallbackNotice, plain_attention
from .reference_rows import REFERENCE_ROWS_KEY
from .step_window import StepWindow

FORK_ON_CLONE_KEY = "refguide_easyref_fork_on_clone"


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

    # reads the reference rows itself: they take the gate of the chunk's first image, whose conditioning they carry
    knows_reference_rows = True

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
            # Reference-image rows in front of each chunk (reference_rows.py) are not images of the latent batch.
            leading = int(extra_options.get(REFERENCE_ROWS_KEY) or 0)
            token_mask = mask_for_tokens(self.mask.to(q.device), q.shape[0] // len(kinds), grid, leading)

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

    def __deepcopy__(self, memo):
        """Shared, not copied: a branch never changes after it is built, and it holds the (large) projections."""
        return self


def window_kwargs(window: StepWindow) -> dict:
    """A branch's step window as the IPAdapter protocol's ``sigma_start`` / ``sigma_end`` keyword arguments."""
    return {"sigma_start": window.sigma_start, "sigma_end": window.sigma_end}


def _active(extra_options: dict, kwargs: dict) -> bool:
    """Whether a stacked branch (ours or IPAdapter's) acts at this call: its kwargs read as a StepWindow."""
    default = StepWindow()
    window = StepWindow(kwargs.get("sigma_start", default.sigma_start), kwargs.get("sigma_end", default.sigma_end))
    return window.contains(extra_options)


class DecoupledCrossAttention:
    """attn2 replace: text attention (``inner`` replace, or plain) plus every stacked branch in its sigma window.

    ``callback`` / ``kwargs`` are parallel lists, as in the IPAdapter pack's object, so that pack's ``add`` calls
    and ours interoperate. The EasyRef branches' projections are not listed by ``models()``: they are registered
    once, as additional models of the patched ModelPatcher, which also covers branches that joined another
    pack's object.
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
        return list(self.inner.models()) if self.inner is not None and hasattr(self.inner, "models") else []

    def cleanup(self):
        if self.inner is not None and hasattr(self.inner, "cleanup"):
            self.inner.cleanup()

    def __deepcopy__(self, memo):
        """ComfyUI versions that deep-copy model_options on clone() get a fork (never the shared object)."""
        forked = self.fork()
        memo[id(self)] = forked
        return forked


def fork_foreign(existing):
    """A copy of another pack's add-protocol object whose branch lists are its own, so that ``add`` on the copy
    does not change the model the original belongs to. An object that cannot be copied is an error (sharing it
    would change that model silently)."""
    try:
        forked = copy.copy(existing)
        for name, value in vars(forked).items():
            if isinstance(value, list):
                setattr(forked, name, list(value))
            elif isinstance(value, dict):
                setattr(forked, name, dict(value))
    except TypeError as error:  # copy.copy refuses the object, or it has no __dict__ (slots)
        raise TypeError(
            f"Apply EasyRef: the cross-attention patch {type(existing).__module__}.{type(existing).__qualname__} "
            f"that another node put on this model cannot be copied ({error}), and adding to it in place would "
            "change the model it came from as well. Apply EasyRef before that node instead."
        ) from error
    return forked


def carries_easyref(obj) -> bool:
    """True for attn2 objects that hold EasyRef branches: ours, or another pack's object an EasyRef branch joined."""
    if isinstance(obj, DecoupledCrossAttention):
        return True
    callbacks = getattr(obj, "callback", None)
    return isinstance(callbacks, list) and any(isinstance(c, EasyRefBranch) for c in callbacks)


def fork(obj):
    """A fork of an attn2 object that carries EasyRef branches (ours or another pack's)."""
    return obj.fork() if isinstance(obj, DecoupledCrossAttention) else fork_foreign(obj)


def fork_on_clone(original, clone) -> None:
    """``CallbacksMP.ON_CLONE`` callback: the clone gets forks of every attn2 object that carries EasyRef branches."""
    replaces = clone.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for key, obj in replaces.items():
        if carries_easyref(obj):
            replaces[key] = fork(obj)


def install_fork_on_clone(model_patcher) -> None:
    """Register :func:`fork_on_clone` once on ``model_patcher`` (ComfyUI copies callbacks to every clone)."""
    on_clone = comfy.patcher_extension.CallbacksMP.ON_CLONE
    if not model_patcher.get_callbacks(on_clone, FORK_ON_CLONE_KEY):
        model_patcher.add_callback_with_key(on_clone, FORK_ON_CLONE_KEY, fork_on_clone)


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
