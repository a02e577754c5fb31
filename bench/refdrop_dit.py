"""RefDrop on diffusion transformers at Flux shapes, all figures measured in this one run (timings interleaved):

- the attention call: ComfyUI's attention with Apply RefDrop's override vs without, q/k/v as Flux hands them
  over (B, 24 heads, 1024 image + 256 text tokens, 128) with ``skip_reshape``;
- a whole sampling step (ComfyUI's sampler, cfg 1 as Flux dev is used) of a Flux model with one double-stream
  and one single-stream block at full width (3072, 24 heads), 1024 image tokens (a 512x512 image) and 256 text
  tokens: time and peak-memory ratio with and without Apply RefDrop.

    bash scripts/host.sh bench refdrop_dit [--batch 2] [--pytorch-attention]   (CPU; REFGUIDE_DEVICE=cuda on a GPU)

Floor: each guided row needs one extra attention per reference (row 0 is the reference, the other B-1 rows
are guided). For the attention call the time floor is 1 + (B-1)/B; for the step it is
1 + (B-1) * t(one row's attention) * blocks / t(plain step), with t(one row's attention) measured here too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from refguide_testing.host import setup_host  # noqa: E402

setup_host(pytorch_attention="--pytorch-attention" in sys.argv)

import comfy.ldm.modules.attention as comfy_attention  # noqa: E402
import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.supported_models  # noqa: E402
import torch  # noqa: E402
from refguide.comfy_patches.dit_override import OVERRIDE_KEY, ForwardState  # noqa: E402
from refguide.nodes.refdrop import ApplyRefDrop  # noqa: E402
from refguide_testing.tiny_dits import TINY_FLUX, init_weights_, tiny_dit  # noqa: E402

from bench._measure import median_times, run_isolated, step_peak_bytes  # noqa: E402

DEVICE = mm.get_torch_device()
ON_GPU = DEVICE.type == "cuda"
DTYPE = torch.bfloat16 if ON_GPU else torch.float32
WIDTH, HEADS, IMAGE_TOKENS, TEXT_TOKENS = 3072, 24, 1024, 256
LATENT = 64  # 64x64 latent -> 32x32 patches = 1024 image tokens
BLOCKS = 2  # one double-stream + one single-stream block: two attention calls a step
FLUX_FULL_WIDTH = dict(TINY_FLUX, hidden_size=WIDTH, num_heads=HEADS, axes_dim=[16, 56, 56], mlp_ratio=4.0,
                       context_in_dim=4096, vec_in_dim=768, depth=1, depth_single_blocks=1)  # fmt: skip


def flux_model(patched: bool):
    model_config = comfy.supported_models.Flux(dict(FLUX_FULL_WIDTH))
    model_config.set_inference_dtype(DTYPE, None)
    model = model_config.get_model({})
    init_weights_(model, 0, std=0.02)
    patcher = comfy.model_patcher.ModelPatcher(model, DEVICE, mm.unet_offload_device())
    if patched:
        patcher = ApplyRefDrop.execute(patcher, 0.3, 1, False, "", "").args[0]
    return patcher


def attention_calls(batch: int):
    """Closures: one Flux attention call plain, with our override, and one row's plain attention (the floor unit)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    tokens = IMAGE_TOKENS + TEXT_TOKENS
    q, k, v = (torch.randn(batch, HEADS, tokens, WIDTH // HEADS, generator=g).to(DEVICE, DTYPE) for _ in range(3))
    patched = ApplyRefDrop.execute(tiny_dit("flux"), 0.3, 1, False, "", "").args[0]  # the override is the same
    options = dict(patched.model_options["transformer_options"])
    override = options[OVERRIDE_KEY]
    base = {"cond_or_uncond": [0], "block_type": "double", "block_index": 0}

    def call(rows, with_override):
        opts = dict(base)
        if with_override:
            opts.update(options)
            opts[override.state_key] = ForwardState({})
        with torch.no_grad():
            return comfy_attention.optimized_attention(q[rows], k[rows], v[rows], HEADS, skip_reshape=True,
                                                       transformer_options=opts)  # fmt: skip

    everything = slice(0, batch)
    return {
        "plain": lambda: call(everything, False),
        "ours": lambda: call(everything, True),
        "row": lambda: call(slice(0, 1), False),
    }


def sampling_step(patched: bool, batch: int):
    model = flux_model(patched)
    g = torch.Generator().manual_seed(1)
    extras = {"pooled_output": torch.randn(batch, 768, generator=g), "guidance": 3.5}
    positive = [[torch.randn(batch, TEXT_TOKENS, 4096, generator=g), extras]]

    def step(size=LATENT):
        latent = torch.zeros(batch, 16, size, size)
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(2))
        comfy.sample.sample(model, noise, 1, 1.0, "euler", "simple", positive, positive, latent, seed=2,
                            disable_pbar=True)  # fmt: skip

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2, help="images in the batch (row 0 is the reference)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=["plain", "patched"])
    parser.add_argument("--pytorch-attention", action="store_true",
                        help="PyTorch SDPA (ComfyUI's --use-pytorch-cross-attention) instead of ComfyUI's default")  # fmt: skip
    args = parser.parse_args()
    if args.worker:
        step = sampling_step(args.worker == "patched", args.batch)
        step(8)  # warm-up on a small input: loads kernels without raising the peak
        print(json.dumps({"peak_bytes": step_peak_bytes(step)}))
        return

    batch = args.batch
    print(f"device {DEVICE}, {DTYPE}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"ComfyUI attention: {comfy_attention.optimized_attention.__name__}; batch {batch} (1 reference)")  # fmt: skip
    calls = attention_calls(batch)
    times = median_times(calls, args.repeats)
    floor = 1 + (batch - 1) / batch
    ratio = times["ours"] / times["plain"]
    print(f"\nattention call, Flux layout ({batch}, {HEADS}, {IMAGE_TOKENS}+{TEXT_TOKENS}, {WIDTH // HEADS}): "
          f"plain {times['plain'] * 1e3:.1f} ms, RefDrop {times['ours'] * 1e3:.1f} ms, ratio {ratio:.3f}, "
          f"floor {floor:.3f}, ratio/floor {ratio / floor:.3f}")  # fmt: skip
    row_time = times["row"]
    del calls

    steps = {name: sampling_step(name == "patched", batch) for name in ("plain", "patched")}
    step_times = median_times(steps, repeats=max(2, args.repeats - 1))
    del steps
    extra = ["--pytorch-attention"] if args.pytorch_attention else []
    peaks = {name: run_isolated("bench.refdrop_dit", "--worker", name, "--batch", str(batch), *extra)["peak_bytes"]
             for name in ("plain", "patched")}  # fmt: skip
    step_ratio = step_times["patched"] / step_times["plain"]
    step_floor = 1 + (batch - 1) * row_time * BLOCKS / step_times["plain"]
    print(f"sampling step, Flux with 1 double + 1 single block at width {WIDTH} ({HEADS} heads), cfg 1: time "
          f"{step_times['plain']:.2f} s -> {step_times['patched']:.2f} s (ratio {step_ratio:.3f}, floor "
          f"{step_floor:.3f}, ratio/floor {step_ratio / step_floor:.3f}); step peak memory "
          f"{peaks['plain'] / 2**20:.0f} MiB -> {peaks['patched'] / 2**20:.0f} MiB "
          f"(ratio {peaks['patched'] / peaks['plain']:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
