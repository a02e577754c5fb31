"""Reference pictures and regions at real layer widths, all figures measured in this one run (timings interleaved):

- SDXL: the SDXL UNet configuration at full width (320/640/1280 channels, 64-dim heads, 2048-wide context; one
  transformer layer per block instead of SDXL's 2 / 10 so that a CPU step takes seconds), random weights, a
  whole sampling step (cfg 5: two guidance chunks) with Apply RefDrop (Reference Image) vs plain, next to the
  floor: the plain step over the extra reference rows (a plain step with more images) plus the extra attentions
  (per self-attention call, chunk and reference: the guided rows' queries against the reference row's keys);
- regions: the same step with two pictures and two regions (left / right) vs two pictures without regions;
- diffusion transformers: Apply RefDrop (Reference Image) on a Flux-shaped model (one double- and one single-
  stream block at width 3072, 24 heads) and a Z-Image-shaped model (width 3840, 30 heads, one refiner of each
  kind and one layer), 512x512, cfg 1, vs plain, next to the same kind of floor.

    bash scripts/host.sh bench refdrop_pictures [--repeats 3] [--size 64]   (CPU; REFGUIDE_DEVICE=cuda on a GPU)

Peak memory is measured in fresh processes (bench/_measure.step_peak_bytes).
"""

from __future__ import annotations

import argparse
import json
import sys

from bench._measure import configure_host

configure_host(pytorch_attention="--pytorch-attention" in sys.argv)

import comfy.ldm.modules.attention as comfy_attention  # noqa: E402
import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.supported_models  # noqa: E402
import torch  # noqa: E402
from refguide.comfy_patches import unet_blocks  # noqa: E402
from refguide.comfy_patches.attention_calls import plain_attention  # noqa: E402
from refguide.comfy_patches.dit_override import OVERRIDE_KEY  # noqa: E402
from refguide.nodes.refdrop import ApplyRefDropImage  # noqa: E402
from refguide_testing import tiny_dits, tiny_models  # noqa: E402

from bench._measure import median_times, run_isolated, step_peak_bytes  # noqa: E402

DEVICE = mm.get_torch_device()
ON_GPU = DEVICE.type == "cuda"
DTYPE = torch.float16 if ON_GPU else torch.float32
IMAGES = 2  # generated images per chunk (SDXL)
SDXL_FULL_WIDTH = dict(
    tiny_models.TINY_SDXL_UNET,
    model_channels=320,
    channel_mult=[1, 2, 4],
    num_res_blocks=[2, 2, 2],
    transformer_depth=[0, 0, 1, 1, 1, 1],
    transformer_depth_middle=1,
    transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1],
    adm_in_channels=2816,
)
FLUX_SHAPE = dict(tiny_dits.TINY_FLUX, hidden_size=3072, num_heads=24, axes_dim=[16, 56, 56], mlp_ratio=4.0,
                  context_in_dim=4096, vec_in_dim=768, depth=1, depth_single_blocks=1)  # fmt: skip
ZIMAGE_SHAPE = dict(tiny_dits.TINY_ZIMAGE, dim=3840, n_heads=30, n_kv_heads=30, axes_dims=[32, 48, 48],
                    cap_feat_dim=2560, n_layers=1, n_refiner_layers=1)  # fmt: skip
DIT_TEXT_TOKENS = {"flux": 256, "zimage": 128}
DIT_CONTEXT = {"flux": 4096, "zimage": 2560}


def sdxl_model():
    config = comfy.supported_models.SDXL(dict(SDXL_FULL_WIDTH))
    config.set_inference_dtype(DTYPE, None)
    model = tiny_models.init_module_(config.get_model({}), 0)
    return comfy.model_patcher.ModelPatcher(model, DEVICE, mm.unet_offload_device())


def dit_model(name):
    cls, shape = {"flux": (comfy.supported_models.Flux, FLUX_SHAPE), "zimage": (comfy.supported_models.ZImage,
                                                                                ZIMAGE_SHAPE)}[name]  # fmt: skip
    config = cls(dict(shape))
    config.set_inference_dtype(torch.bfloat16 if ON_GPU else torch.float32, None)
    model = config.get_model({})
    tiny_dits.init_weights_(model, 0, std=0.02)
    return comfy.model_patcher.ModelPatcher(model, DEVICE, mm.unet_offload_device())


def pictures(count, size):
    return torch.rand(count, size * 8, size * 8, 3, generator=torch.Generator().manual_seed(5))


def left_right(size):
    regions = torch.zeros(2, size * 8, size * 8)
    regions[0, :, : size * 4] = 1.0
    regions[1, :, size * 4 :] = 1.0
    return regions


def build(config: str, size: int):
    """A step function: '<family>:<variant>' with family sdxl / flux / zimage and variant plain / picture / rows /
    two / regions (rows: a plain step over the reference rows as more images)."""
    family, variant = config.split(":")
    references = 2 if variant in ("two", "regions") else 1
    if family == "sdxl":
        model, vae, images, cfg = sdxl_model(), tiny_models.tiny_vae(), IMAGES, 5.0
    else:
        model, vae, images, cfg = dit_model(family), tiny_dits.tiny_flux_vae(), 1, 1.0
    if variant == "rows":
        images += references
    elif variant != "plain":
        regions = left_right(size) if variant == "regions" else None
        strengths = "0.3, 0.3" if references == 2 else ""
        model = ApplyRefDropImage.execute(model, vae, pictures(references, size), 0.3, 5, False, strengths, "", 0.0,
                                          1.0, None, regions).args[0]  # fmt: skip
    g = torch.Generator().manual_seed(1)
    if family == "sdxl":
        positive = [[torch.randn(images, 77, 2048, generator=g), {"pooled_output": torch.randn(images, 1280,
                                                                                               generator=g)}]]  # fmt: skip
        negative = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}]]
        channels = 4
    else:
        tokens, width = DIT_TEXT_TOKENS[family], DIT_CONTEXT[family]
        extras = {"pooled_output": torch.randn(images, 768, generator=g)} if family == "flux" else {}
        positive = [[torch.randn(images, tokens, width, generator=g), extras]]
        negative = [[torch.zeros(1, tokens, width), dict(extras)]]
        channels = 16

    def step(latent_size=size):
        latent = torch.zeros(images, channels, latent_size, latent_size)
        comfy.sample.sample(model, torch.randn(latent.shape, generator=torch.Generator().manual_seed(2)), 1, cfg,
                            "euler", "normal", positive, negative, latent, seed=2, disable_pbar=True)  # fmt: skip

    return step, model


def extra_attention_seconds(family: str, size: int, references: int, repeats: int) -> float:
    """The floor's extra attentions of one step: per self-attention call, chunk and reference, the guided rows'
    queries against one reference row's keys/values, recorded from a plain step with the reference rows."""
    _, model = build(f"{family}:rows", size)
    model = model.clone()
    calls: dict = {}
    if family == "sdxl":

        def record(q, k, v, extra_options):
            chunks = len(extra_options.get("cond_or_uncond") or [0])
            key = ("unet", q.shape[1], q.shape[2], extra_options["n_heads"], q.shape[0] // chunks, chunks)
            calls[key] = calls.get(key, 0) + 1
            return plain_attention(q, k, v, extra_options)

        for block in unet_blocks.transformer_blocks(model):
            for key in block.keys():
                model.set_model_attn1_replace(record, *key)
    else:

        def override(func, q, k, v, heads, *args, transformer_options=None, **kwargs):
            if q.shape == k.shape:
                chunks = len(transformer_options.get("cond_or_uncond") or [0])
                key = ("dit", q.shape[2], q.shape[3], heads, q.shape[0] // chunks, chunks)
                calls[key] = calls.get(key, 0) + 1
            return func(q, k, v, heads, *args, transformer_options=transformer_options, **kwargs)

        model.model_options.setdefault("transformer_options", {})[OVERRIDE_KEY] = override
    g = torch.Generator().manual_seed(3)
    latent = torch.zeros(1 if family != "sdxl" else IMAGES + references, 4 if family == "sdxl" else 16, size, size)
    tokens, width = (77, 2048) if family == "sdxl" else (DIT_TEXT_TOKENS[family], DIT_CONTEXT[family])
    rows = latent.shape[0] + (references if family != "sdxl" else 0)
    latent = torch.zeros(rows, latent.shape[1], size, size)
    extras = {"pooled_output": torch.randn(rows, 1280 if family == "sdxl" else 768, generator=g)}
    if family == "zimage":
        extras = {}
    positive = [[torch.randn(rows, tokens, width, generator=g), extras]]
    negative = [[torch.zeros(1, tokens, width), dict(extras)]]
    comfy.sample.sample(model, torch.randn(latent.shape, generator=g), 1, 5.0 if family == "sdxl" else 1.0, "euler",
                        "normal", positive, negative, latent, seed=2, disable_pbar=True)  # fmt: skip
    total = 0.0
    for (kind, tokens, width, heads, rows_per_chunk, chunks), count in calls.items():
        guided = rows_per_chunk - references
        if kind == "unet":
            q = torch.randn(1, guided * tokens, width, generator=g).to(DEVICE, DTYPE)
            kv = torch.randn(1, tokens, width, generator=g).to(DEVICE, DTYPE)

            def one(q=q, kv=kv, heads=heads):
                with torch.no_grad():
                    return comfy_attention.optimized_attention(q, kv, kv, heads)
        else:
            q = torch.randn(guided, heads, tokens, width, generator=g).to(DEVICE, DTYPE)
            kv = torch.randn(1, heads, tokens, width, generator=g).to(DEVICE, DTYPE).expand(guided, -1, -1, -1)

            def one(q=q, kv=kv, heads=heads):
                with torch.no_grad():
                    return comfy_attention.optimized_attention(q, kv, kv, heads, skip_reshape=True)

        total += median_times({"attention": one}, repeats)["attention"] * count * chunks * references
    return total


def worker(config: str, size: int) -> None:
    step, _ = build(config, size)
    step(8)  # warm-up on a small input
    print(json.dumps({"peak_bytes": step_peak_bytes(step)}))


def peak(config: str, size: int, extra: list[str]) -> int:
    return run_isolated("bench.refdrop_pictures", "--worker", config, "--size", str(size), *extra)["peak_bytes"]


def picture_section(family: str, size: int, repeats: int, extra: list[str], label: str) -> None:
    steps = {variant: build(f"{family}:{variant}", size)[0] for variant in ("plain", "picture", "rows")}
    times = median_times(steps, repeats)
    attention = extra_attention_seconds(family, size, 1, repeats)
    floor = times["rows"] + attention
    peaks = {variant: peak(f"{family}:{variant}", size, extra) for variant in ("plain", "picture", "rows")}
    print(f"\n{label}")
    print(f"  time {times['plain']:.2f} s -> {times['picture']:.2f} s (ratio {times['picture'] / times['plain']:.3f}); "
          f"floor {floor:.2f} s (plain step with the reference rows {times['rows']:.2f} s + extra attentions "
          f"{attention:.2f} s; ratio {floor / times['plain']:.3f}); ratio/floor {times['picture'] / floor:.3f}")  # fmt: skip
    print(f"  step peak memory {peaks['plain'] / 2**20:.0f} MiB -> {peaks['picture'] / 2**20:.0f} MiB (ratio "
          f"{peaks['picture'] / peaks['plain']:.3f}); floor (plain step with the reference rows) "
          f"{peaks['rows'] / 2**20:.0f} MiB; ratio/floor {peaks['picture'] / peaks['rows']:.3f}")  # fmt: skip


def regions_section(size: int, repeats: int) -> None:
    steps = {variant: build(f"sdxl:{variant}", size)[0] for variant in ("two", "regions")}
    times = median_times(steps, repeats)
    print("\nregions: SDXL full width, two pictures, left / right regions vs the same two pictures without regions "
          "(target <= 1.02)")  # fmt: skip
    print(f"  time {times['two']:.2f} s -> {times['regions']:.2f} s (ratio {times['regions'] / times['two']:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker")
    parser.add_argument("--size", type=int, default=128 if ON_GPU else 64, help="latent size (pixels / 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["sdxl", "regions", "flux", "zimage"], action="append")
    parser.add_argument("--pytorch-attention", action="store_true")
    args = parser.parse_args()
    extra = ["--pytorch-attention"] if args.pytorch_attention else []
    if args.worker:
        worker(args.worker, args.size)
        return
    print(f"device {DEVICE}, {DTYPE}, torch {torch.__version__}, {torch.get_num_threads()} threads, ComfyUI attention: "
          f"{comfy_attention.optimized_attention.__name__}; latent {args.size}x{args.size} "
          f"({args.size * 8}x{args.size * 8} pixels)")  # fmt: skip
    only = set(args.only or ["sdxl", "regions", "flux", "zimage"])
    if "sdxl" in only:
        picture_section("sdxl", args.size, args.repeats, extra,
                        f"reference picture, SDXL UNet at full width (one transformer layer per block), {IMAGES} "
                        "images x 2 chunks (cfg 5), 1 picture (target ratio/floor <= 1.10)")  # fmt: skip
    if "regions" in only:
        regions_section(args.size, args.repeats)
    for family, label in (("flux", "Flux shape (1 double + 1 single block, width 3072, 24 heads), 1 image, cfg 1"),
                          ("zimage", "Z-Image shape (width 3840, 30 heads, 1 refiner each + 1 layer), 1 image, "
                                     "cfg 1")):  # fmt: skip
        if family in only:
            picture_section(family, args.size, max(2, args.repeats - 1), extra, f"reference picture, {label}")


if __name__ == "__main__":
    main()
