"""RefDrop benchmark: attn1 call time vs its floor at SDXL shapes, and peak-memory / time ratios of a UNet step
and of a whole sampling step with and without Apply RefDrop, all measured in this one run.

    bash scripts/host.sh bench refdrop          (CPU; REFGUIDE_DEVICE=cuda on a GPU machine)

Floor for the attn1 call: every guided row needs one extra attention, so time >= 1 + guided rows / all rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from refguide_testing.host import setup_host  # noqa: E402

setup_host(pytorch_attention="--pytorch-attention" in sys.argv)

import torch  # noqa: E402

import comfy.model_management as mm  # noqa: E402
import comfy.sample  # noqa: E402
from bench._measure import median_times, run_isolated, step_peak_bytes  # noqa: E402
from refguide.comfy_patches.refdrop_patch import FallbackNotice, RefDropAttention, RefDropSettings, plain_attention  # noqa: E402
from refguide.nodes.refdrop import ApplyRefDrop  # noqa: E402
from refguide_testing import tiny_models  # noqa: E402

PER_CHUNK, CHUNKS, REFERENCES = 4, 2, 1
ATTN_SHAPES = [(4096, 640, 10), (1024, 1280, 20)]  # SDXL at 1024x1024: (tokens, width, heads)
LATENT = 128  # 1024x1024 pixels
DEVICE = mm.get_torch_device()
DTYPE = torch.float16 if DEVICE.type == "cuda" else torch.float32


def attn1_section(repeats: int) -> list[dict]:
    rows = []
    for tokens, width, heads in ATTN_SHAPES:
        g = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(PER_CHUNK * CHUNKS, tokens, width, generator=g).to(DEVICE, DTYPE) for _ in range(3))
        side = int(tokens**0.5)
        extra = {"n_heads": heads, "dim_head": width // heads, "attn_precision": None, "cond_or_uncond": [1, 0],
                 "activations_shape": [PER_CHUNK * CHUNKS, width, side, side]}  # fmt: skip
        patch = RefDropAttention(RefDropSettings(tuple(range(REFERENCES)), (0.3,) * REFERENCES), FallbackNotice("bench"))
        with torch.no_grad():
            times = median_times(
                {"plain": lambda: plain_attention(q, k, v, extra), "refdrop": lambda: patch(q, k, v, extra)}, repeats
            )
        floor = 1 + (PER_CHUNK - REFERENCES) / PER_CHUNK
        rows.append({"shape": f"{tokens} tokens x {width} ({heads} heads), batch {PER_CHUNK}x{CHUNKS}",
                     "plain_ms": times["plain"] * 1e3, "refdrop_ms": times["refdrop"] * 1e3,
                     "ratio": times["refdrop"] / times["plain"], "floor": floor})  # fmt: skip
    return rows


def build(config: str, refdrop: bool):
    """(model patcher, step function) for one configuration."""
    model = tiny_models.tiny_unet("sdxl", seed=0)
    if refdrop:
        model = ApplyRefDrop.execute(model, 0.3, REFERENCES, False, "", "").args[0]
    g = torch.Generator().manual_seed(1)
    if config == "unet":
        batch = PER_CHUNK * CHUNKS
        x = torch.randn(batch, 4, LATENT, LATENT, generator=g)
        context = torch.randn(batch, 77, 2048, generator=g)
        y = torch.randn(batch, tiny_models.TINY_SDXL_UNET["adm_in_channels"], generator=g)
        mm.load_models_gpu([model])
        unet = model.model.diffusion_model
        options = dict(model.model_options.get("transformer_options", {}), cond_or_uncond=[1, 0])

        def step(size=LATENT):
            with torch.no_grad():
                args = [t.to(DEVICE, DTYPE) for t in (x[..., :size, :size], context, y)]
                unet(args[0], torch.full((batch,), 500.0, device=DEVICE), args[1], args[2],
                     transformer_options=dict(options))  # fmt: skip

        return step

    positive = [[torch.randn(PER_CHUNK, 77, 2048, generator=g),
                 {"pooled_output": torch.randn(PER_CHUNK, tiny_models.TINY_POOLED_DIM, generator=g)}]]  # fmt: skip
    negative = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, tiny_models.TINY_POOLED_DIM)}]]

    def step(size=LATENT):
        latent = torch.zeros(PER_CHUNK, 4, size, size)
        comfy.sample.sample(model, torch.randn(latent.shape, generator=torch.Generator().manual_seed(2)), 1, 5.0,
                            "euler", "normal", positive, negative, latent, seed=2, disable_pbar=True)  # fmt: skip

    return step


def worker(config: str, refdrop: bool) -> None:
    step = build(config, refdrop)
    step(16)  # warm-up on a small input: loads kernels without raising the peak
    print(json.dumps({"peak_bytes": step_peak_bytes(step)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", choices=["unet", "sampling"])
    parser.add_argument("--refdrop", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pytorch-attention", action="store_true",
                        help="use PyTorch SDPA (ComfyUI's --use-pytorch-cross-attention) instead of the default")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.refdrop)
        return

    import comfy.ldm.modules.attention as comfy_attention

    print(f"device: {DEVICE}, dtype: {DTYPE}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"ComfyUI attention: {comfy_attention.optimized_attention.__name__}")  # fmt: skip
    print(f"\nattn1 call, {REFERENCES} reference per chunk (target: ratio within 10% of the floor)")
    for row in attn1_section(args.repeats):
        print(f"  {row['shape']}: plain {row['plain_ms']:.1f} ms, RefDrop {row['refdrop_ms']:.1f} ms, "
              f"ratio {row['ratio']:.3f}, floor {row['floor']:.3f}, ratio/floor {row['ratio'] / row['floor']:.3f}")  # fmt: skip

    for config, label in [("unet", "UNet forward"), ("sampling", "whole sampling step (cfg 5)")]:
        steps = {name: build(config, refdrop=name == "refdrop") for name in ("plain", "refdrop")}
        times = median_times(steps, repeats=max(2, args.repeats // 2))
        extra = ["--pytorch-attention"] if args.pytorch_attention else []
        peaks = {name: run_isolated("bench.refdrop", "--worker", config, *extra,
                                    *(["--refdrop"] if name == "refdrop" else []))["peak_bytes"]
                 for name in ("plain", "refdrop")}  # fmt: skip
        print(f"\n{label}, small SDXL-shaped UNet at {LATENT * 8}x{LATENT * 8} (SDXL token counts 4096/1024), "
              f"{PER_CHUNK} images x {CHUNKS} chunks (target: peak-memory ratio <= 1.10)")  # fmt: skip
        print(f"  time: plain {times['plain']:.2f} s, RefDrop {times['refdrop']:.2f} s, "
              f"ratio {times['refdrop'] / times['plain']:.3f}")  # fmt: skip
        print(f"  step peak memory: plain {peaks['plain'] / 2**20:.0f} MiB, RefDrop {peaks['refdrop'] / 2**20:.0f} MiB, "
              f"ratio {peaks['refdrop'] / peaks['plain']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
