"""The chained ``optimized_attention_override`` that reaches every diffusion transformer's attention (shared).

ComfyUI's attention functions call ``transformer_options["optimized_attention_override"]`` when it is set; that
is the one seam into the attention of every DiT (Flux, Qwen-Image, Wan, ...). This module knows nothing of the
method that uses it (it imports no RefDrop module): a method plugs in a *policy*.

- :func:`patch_dit(model, family, policy, excluded=frozenset())` returns a clone of ``model`` (``family``: its
  bound ``dit_families`` entry) whose self-attention calls are guided by ``policy``. It sets the override
  (chaining an override that is already there: that one then computes the plain attention *and* every extra
  attention of ours) and adds an APPLY_MODEL wrapper that gives each model call a fresh call counter
  (APPLY_MODEL, not DIFFUSION_MODEL: some DiTs, SD3's MMDiT for one, do not run DIFFUSION_MODEL wrappers).
- A *policy* (:class:`GuidancePolicy`) says, for one self-attention call, which query tokens are guided toward
  which keys/values: ``policy.groups(call, site)`` returns :class:`~..attention_patches.guidance.GuidanceGroup` s
  (``[]``/None = leave it plain; raise :class:`NotUnderstood` for a layout it cannot read: the call runs
  plain, with one warning). ``policy.node_name`` names the node in messages; ``stays_outermost = True`` keeps
  the policy's override outermost when another one is applied later (it goes inside).
- :class:`AttentionCall` is one call, normalised: q/k/v, heads, mask, layout (``token_axis``: 1 for
  (B, L, heads*dim), 2 for ComfyUI's ``skip_reshape`` (B, heads, L, dim)), ``out_token_axis``, the call's
  ``transformer_options`` (``cond_or_uncond``, ``sigmas``, ``grid_sizes``, ...) and ``forward`` (the per-forward
  state of the wrapper: ``forward.inputs`` holds the model call's keyword inputs, the extra conds such as
  ``ref_latents`` or ``num_video_frames``).
- :class:`CallSite` is what the family says a call is: its block label (the names ``exclude_blocks`` accepts)
  and whether it is self-attention. Which call is which comes from ONE place, the family
  (``dit_families``): ComfyUI's ``block_type`` / ``block_index`` where the model sets them, else the call's
  position in the forward (the wrapper's counter, keyed by block), then a shape check (q, k, v of one sequence:
  same rows, same token count). Cross-attention (q and k from different sequences) is never touched, even
  when the token counts happen to be equal: the family's call order says which call is cross-attention.

The blend is the one Eq. 5 / Eq. 6 implementation, :func:`~..attention_patches.guidance.reference_feature_guidance_`.
Every extra attention goes through the backend ``func`` ComfyUI handed us (or the chained override) with the
call's own keyword arguments, ``_inside_attn_wrapper`` included, so the user's attention backend runs it and
the override is not re-entered. Nothing survives a forward; no K/V copies (views only), no attention matrices.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import Protocol

import comfy.patcher_extension
import torch

from ..attention_patches.guidance import GuidanceGroup, reference_feature_guidance_
from .attention_calls import FallbackNotice
from .dit_families.base import CallSite

OVERRIDE_KEY = "optimized_attention_override"
# Set on the transformer_options of the extra attentions we compute: overrides of this pack pass them through.
EXTRA_CALL_KEY = "refguide_extra_attention"


@dataclass
class ForwardState:
    """One diffusion-model forward, as the wrapper saw it: call counter per block key, the model's inputs.

    ``latent_shape``: the model input x (B, C, [T,] H, W); ``context_tokens``: tokens of its c_crossattn (the text
    the model embeds in front of the image tokens of joint attention), None when absent.
    """

    inputs: dict
    calls: dict = field(default_factory=dict)
    latent_shape: tuple[int, ...] | None = None
    context_tokens: int | None = None

    def next_ordinal(self, key) -> int:
        ordinal = self.calls.get(key, 0)
        self.calls[key] = ordinal + 1
        return ordinal


@dataclass(frozen=True)
class AttentionCall:
    """One attention call, normalised from the arguments ComfyUI's attention functions take."""

    q: object
    k: object
    v: object
    heads: int
    mask: object
    skip_reshape: bool
    skip_output_reshape: bool
    kwargs: dict
    transformer_options: dict
    forward: ForwardState | None

    @property
    def token_axis(self) -> int:
        return 2 if self.skip_reshape else 1

    @property
    def out_token_axis(self) -> int:
        return 2 if self.skip_output_reshape else 1

    @property
    def rows(self) -> int:
        return self.q.shape[0]

    @property
    def q_tokens(self) -> int:
        return self.q.shape[self.token_axis]

    @property
    def k_tokens(self) -> int:
        return self.k.shape[self.token_axis]

    def one_sequence(self) -> bool:
        """q, k, v come from one sequence: same rows, same token count (necessary for self-attention)."""
        axis = self.token_axis
        return (
            self.k.shape[0] == self.rows
            and self.v.shape[0] == self.rows
            and self.k.shape[axis] == self.q.shape[axis]
            and self.v.shape[axis] == self.q.shape[axis]
        )


def _bind(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
    kwargs["attn_precision"] = attn_precision
    return q, k, v, heads, mask, bool(skip_reshape), bool(skip_output_reshape), kwargs


class GuidancePolicy(Protocol):
    """Which query tokens are guided toward which keys/values, for one self-attention call."""

    node_name: str

    def groups(self, call: AttentionCall, site: CallSite) -> list[GuidanceGroup] | None: ...


class NotUnderstood(Exception):
    """A call whose layout a policy cannot interpret: it runs plain, with one warning."""


class DiTAttentionOverride:
    """The ``optimized_attention_override`` of one patched model: plain attention, then the policy's terms.

    ``previous`` is the override that was set before (another pack's backend switcher, or another node of
    ours): it computes the plain attention and every extra attention. Stateless between forwards; the
    per-forward counter lives in ``transformer_options[self.state_key]``, set by :meth:`wrapper`.
    """

    def __init__(self, family, policy: GuidancePolicy, excluded: frozenset[str], previous=None):
        self.family = family
        self.policy = policy
        self.excluded = excluded
        self.previous = previous
        self.notice = FallbackNotice(policy.node_name)
        self.state_key = f"refguide_forward_{uuid.uuid4().hex}"

    def with_previous(self, previous) -> DiTAttentionOverride:
        """The same override (same policy, notice and per-forward state key) around another ``previous``."""
        twin = copy.copy(self)
        twin.previous = previous
        return twin

    # --- the APPLY_MODEL wrapper: a fresh counter per model call ---------------------------------------------
    def wrapper(self, executor, *args, **kwargs):
        options = kwargs.get("transformer_options")
        if not isinstance(options, dict):
            options = next((a for a in args if isinstance(a, dict) and OVERRIDE_KEY in a), None)
        if options is None:
            return executor(*args, **kwargs)
        inputs = {name: value for name, value in kwargs.items() if name != "transformer_options"}
        # APPLY_MODEL's positional inputs: x, t, c_concat, c_crossattn, control, transformer_options
        x = args[0] if args and torch.is_tensor(args[0]) else kwargs.get("x")
        context = args[3] if len(args) > 3 else kwargs.get("c_crossattn")
        options[self.state_key] = ForwardState(
            inputs,
            latent_shape=tuple(x.shape) if torch.is_tensor(x) else None,
            context_tokens=context.shape[1] if torch.is_tensor(context) and context.ndim >= 2 else None,
        )
        try:
            return executor(*args, **kwargs)
        finally:
            options.pop(self.state_key, None)

    # --- the override ------------------------------------------------------------------------------------
    knows_reference_rows = True  # the policies read the reference-image rows themselves (reference_rows)

    def __call__(self, func, *args, **kwargs):
        # reference_rows imports this module, so it is looked up at use. Another node's override chained before
        # ours sees only the latent batch's rows (row_safe_override); one that chains ours from outside got them
        # hidden: they are put back for the policy and its output for them handed back (reveal / conceal).
        from .reference_rows import reveal_reference_rows, row_safe_override

        hidden, args, kwargs = reveal_reference_rows(args, kwargs)
        out = self.guided(row_safe_override(self.previous), func, *args, **kwargs)
        return out if hidden is None else hidden.conceal(out)

    def guided(self, run, func, *args, **kwargs):
        """The plain attention through ``run`` (the override set before ours, or the backend), then the policy's."""
        options = kwargs.get("transformer_options") or {}
        if options.get(EXTRA_CALL_KEY):
            return run(func, *args, **kwargs)
        site = self.site(args, kwargs, options)
        out = run(func, *args, **kwargs)
        if site is None:
            return out
        call, site = site
        try:
            groups = self.policy.groups(call, site)
        except NotUnderstood as error:
            self.notice.report(f"{site.label}: {error}")
            return out
        if not groups:
            return out
        extra_kwargs = dict(call.kwargs, transformer_options={**options, EXTRA_CALL_KEY: True})

        def attention(queries, keys, values, mask):
            return run(func, queries, keys, values, call.heads, mask=mask, skip_reshape=call.skip_reshape,
                       skip_output_reshape=call.skip_output_reshape, **extra_kwargs)  # fmt: skip

        return reference_feature_guidance_(
            out, call.q, call.k, call.v, groups, attention, call.token_axis, call.out_token_axis, call.mask
        )

    def site(self, args, kwargs, options):
        """(AttentionCall, CallSite) when this call is a guided self-attention call, else None (counted anyway)."""
        forward = options.get(self.state_key)
        if forward is None:
            if "cond_or_uncond" in options:
                self.notice.report("the model-call wrapper did not run, so calls cannot be told apart")
            return None
        try:
            q, k, v, heads, mask, skip_reshape, skip_output_reshape, rest = _bind(*args, **kwargs)
        except TypeError:
            self.notice.report("an attention call with unexpected arguments")
            return None
        call = AttentionCall(q, k, v, heads, mask, skip_reshape, skip_output_reshape, rest, options, forward)
        key = (options.get("block_type"), options.get("block_index"))
        site = self.family.call_site(key, forward.next_ordinal(key), call)
        if site.self_attention and site.label not in self.excluded and not site.problem:
            site = self.family.with_image_tokens(site, call)
        if site.problem:
            self.notice.report(site.problem)
            return None
        if not site.self_attention or site.label in self.excluded:
            return None
        if not call.one_sequence():
            self.notice.report(
                f"{site.label}: expected self-attention, got q {tuple(q.shape)} / k {tuple(k.shape)} / "
                f"v {tuple(v.shape)}"
            )
            return None
        return call, site

    # --- ComfyUI's model-options protocol ------------------------------------------------------------------
    def __deepcopy__(self, memo):
        return self


def patch_dit(model, family, policy: GuidancePolicy, excluded: frozenset[str] = frozenset()):
    """A clone of ``model`` whose self-attention calls ``policy`` guides (the blocks in ``excluded`` stay plain).

    ``family`` is the model's bound diffusion-transformer family (``dit_families.dit_family``), looked up once by
    the caller, which also checked the block names.
    """
    patched = model.clone()
    options = patched.model_options.setdefault("transformer_options", {})
    previous = options.get(OVERRIDE_KEY)
    if isinstance(previous, DiTAttentionOverride) and getattr(previous.policy, "stays_outermost", False):
        # a policy that stays outermost (reference images) keeps its place: the new override goes inside it
        override = DiTAttentionOverride(family, policy, frozenset(excluded), previous.previous)
        options[OVERRIDE_KEY] = previous.with_previous(override)
    else:
        override = DiTAttentionOverride(family, policy, frozenset(excluded), previous)
        options[OVERRIDE_KEY] = override
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, override.state_key, override.wrapper)
    return patched
