"""RefDrop's attention-call cost at HiDream and HunyuanImage 2.1 shapes, all figures measured in this one run.

For each family one self-attention call as the model hands it to ComfyUI's attention (timings interleaved):

- HiDream (I1 / E1, 1024x1024): width 2560 = 20 heads of 128, 4096 image tokens + 128 text tokens, q/k/v
  flat (B, tokens, 2560), the first call of a forward (`double 0`);
- HunyuanImage 2.1 (2048x2048, 32x down-sampled latent, 1x1 patches): width 3584 = 28 heads of 128, 1000 text
  tokens + 4096 image tokens, q/k/v (B, 28, tokens, 128) with ``skip_reshape`` (block `double 0`).

Each line: the plain call, the call with Apply RefDrop's override (the pack's family entry decides the call, as
in a sampling run), and the floor = (plain + the extra reference attention) / plain, where the extra attention
is what Eq. 5 adds: the B-1 guided rows' queries against the reference row's keys/values, timed alone.

    bash scripts/host.sh bench refdrop_families [--batch 2] [--repeats 1] [--tokens 4096] [--pytorch-attention]

``--tokens`` sets the image tokens of both shapes (fewer for a quicker run); CPU by default, REFGUIDE_DEVICE=cuda
on a GPU.
"""

from __future__ import annotations

import argparse
import sys

from bench._measure import configure_host

configure_host(pytorch_attention="--pytorch-attention" in sys.argv)

import comfy.ldm.modules.attention as comfy_attention  # noqa: E402
import comfy.model_management as mm  # noqa: E402
import torch  # noqa: E402
from refguide.comfy_patches.dit_override import OVERRIDE_KEY, ForwardState  # noqa: E402
from refguide.nodes.refdrop import ApplyRefDrop  # noqa: E402
from refguide_testing.tiny_dits import tiny_dit  # noqa: E402

from bench._measure import median_times  # noqa: E402

DEVICE = mm.get_torch_device()
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
# name -> (tiny model of the family (its override is the one a full-size model gets), heads, head width, text
# tokens, text first, block key, skip_reshape)
SHAPES = {
    "HiDream": ("hidream", 20, 128, 128, False, (None, None), False),
    "HunyuanImage 2.1": ("hunyuan_image21", 28, 128, 1000, True, ("double", 0), True),
}


def attention_calls(name: str, batch: int, image_tokens: int):
    """Closures: the plain call, the call through Apply RefDrop's override, and the extra reference attention."""
    tiny, heads, dim, text_tokens, _, (block_type, block_index), skip_reshape = SHAPES[name]
    tokens = image_tokens + text_tokens
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (batch, heads, tokens, dim) if skip_reshape else (batch, tokens, heads * dim)
    q, k, v = (torch.randn(shape, generator=g).to(DEVICE, DTYPE) for _ in range(3))
    patched = ApplyRefDrop.execute(tiny_dit(tiny), 0.3, 1, False, "", "").args[0]
    options = dict(patched.model_options["transformer_options"])
    override = options[OVERRIDE_KEY]
    base = {"cond_or_uncond": [0]}
    if block_type is not None:
        base.update(block_type=block_type, block_index=block_index)

    def call(queries, keys, values, with_override):
        opts = dict(base)
        if with_override:
            opts.update(options)
            opts[override.state_key] = ForwardState({})  # a fresh forward: this is its first call
        with torch.no_grad():
            return comfy_attention.optimized_attention(queries, keys, values, heads, skip_reshape=skip_reshape,
                                                       transformer_options=opts)  # fmt: skip

    guided = batch - 1
    k_ref, v_ref = (x[:1].expand(guided, *x.shape[1:]) for x in (k, v))
    return {
        "plain": lambda: call(q, k, v, False),
        "ours": lambda: call(q, k, v, True),
        "extra": lambda: call(q[1:], k_ref, v_ref, False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2, help="rows of the call (row 0 is the reference)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=4096, help="image tokens of both shapes")
    parser.add_argument("--pytorch-attention", action="store_true",
                        help="PyTorch SDPA (ComfyUI's --use-pytorch-cross-attention) instead of ComfyUI's default")  # fmt: skip
    args = parser.parse_args()
    print(f"device {DEVICE}, {DTYPE}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"ComfyUI attention: {comfy_attention.optimized_attention.__name__}; batch {args.batch} (1 reference), "
          f"{args.repeats} repeats")  # fmt: skip
    for name, (_, heads, dim, text_tokens, text_first, _, skip_reshape) in SHAPES.items():
        times = median_times(attention_calls(name, args.batch, args.tokens), args.repeats)
        ratio = times["ours"] / times["plain"]
        floor = (times["plain"] + times["extra"]) / times["plain"]
        layout = (
            f"{text_tokens} text + {args.tokens} image" if text_first else f"{args.tokens} image + {text_tokens} text"
        )
        form = f"({args.batch}, {heads}, tokens, {dim})" if skip_reshape else f"({args.batch}, tokens, {heads * dim})"
        print(f"\n{name}: one attention call {form}, {layout} tokens, {heads} heads of {dim}: plain "
              f"{times['plain'] * 1e3:.0f} ms, with RefDrop {times['ours'] * 1e3:.0f} ms, extra reference attention "
              f"{times['extra'] * 1e3:.0f} ms; ratio {ratio:.3f}, floor {floor:.3f}, ratio/floor "
              f"{ratio / floor:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
