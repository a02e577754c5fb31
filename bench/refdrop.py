"""RefDrop benchmark, all figures measured in this one run (timings interleaved):

- images: Apply RefDrop's attn1 call vs plain attention at SDXL shapes, next to its floor; time and peak-memory
  ratios of a UNet forward and of a whole sampling step with and without Apply RefDrop;
- video: SVD Temporal RefDrop's spatial attn1 call at SVD shapes, and a whole SVD sampling step (14 frames,
  positive + negative) with and without the node;
- reference image: a whole SDXL sampling step with Apply RefDrop (Reference Image) (one reference picture) vs plain
  sampling, next to its floor: the same step with the reference's extra row in every guidance chunk (a plain
  step over one more image) plus one extra attention per guided row and reference in every attn1 layer.

    bash scripts/host.sh bench refdrop [--pytorch-attention]    (CPU; REFGUIDE_DEVICE=cuda on a GPU machine)

Floor for an attn1 call: each guided row needs one extra attention per reference, so the time ratio cannot go
below 1 + guided rows / all rows (images: 1 + 3/4 with 1 reference in 4; video: 1 + 13/14).
"""

from __future__ import annotations

import argparse
import json
import sys

from bench._measure import configure_host

configure_host(pytorch_attention="--pytorch-attention" in sys.argv)

import comfy.model_management as mm  # noqa: E402
import comfy.sample  # noqa: E402
import torch  # noqa: E402
from refguide.comfy_patches import unet_blocks  # noqa: E402
from refguide.comfy_patches.attention_calls import FallbackNotice, plain_attention  # noqa: E402
from refguide.comfy_patches.refdrop.settings import RefDropSettings  # noqa: E402
from refguide.comfy_patches.refdrop.unet import RefDropAttention  # noqa: E402
from refguide.nodes.refdrop import ApplyRefDrop, ApplyRefDropImage  # noqa: E402
from refguide.nodes.svd import SVDTemporalRefDrop  # noqa: E402
from refguide_testing import tiny_models  # noqa: E402

from bench._measure import median_times, run_isolated, step_peak_bytes  # noqa: E402

DEVICE = mm.get_torch_device()
ON_GPU = DEVICE.type == "cuda"
DTYPE = torch.float16 if ON_GPU else torch.float32

PER_CHUNK, CHUNKS, REFERENCES = 4, 2, 1
SDXL_ATTN = [(4096, 640, 10), (1024, 1280, 20)]  # SDXL at 1024x1024: (tokens, width, heads)
SDXL_LATENT = 128  # 1024x1024 pixels
FRAMES = 14
SVD_LATENT = (72, 128) if ON_GPU else (36, 64)  # 1024x576 on a GPU, 512x288 on the CPU
SVD_ATTN = [(SVD_LATENT[0] * SVD_LATENT[1] // 4**i, 320 * 2 ** min(i, 2), 5 * 2 ** min(i, 2)) for i in range(3)]


def attention_case(batch, chunks, tokens, width, heads, patch):
    """Closures timing plain attention and the patch on the same random q/k/v of one attn1 call."""
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(batch, tokens, width, generator=g).to(DEVICE, DTYPE) for _ in range(3))
    extra = {"n_heads": heads, "dim_head": width // heads, "attn_precision": None, "cond_or_uncond": [1, 0][:chunks],
             "activations_shape": [batch, width, tokens, 1]}  # fmt: skip

    def plain():
        with torch.no_grad():
            return plain_attention(q, k, v, extra)

    def patched():
        with torch.no_grad():
            return patch(q, k, v, extra)

    return plain, patched


def attn1_rows(repeats: int) -> list[str]:
    lines = []
    image_patch = RefDropAttention(RefDropSettings(tuple(range(REFERENCES)), (0.3,)), FallbackNotice("bench"))
    for tokens, width, heads in SDXL_ATTN:
        plain, patched = attention_case(PER_CHUNK * CHUNKS, CHUNKS, tokens, width, heads, image_patch)
        lines.append(ratio_line(f"SDXL {tokens} tok x {width} ({heads} heads), {PER_CHUNK} images x {CHUNKS} chunks",
                                median_times({"plain": plain, "ours": patched}, repeats),
                                1 + (PER_CHUNK - REFERENCES) / PER_CHUNK))  # fmt: skip
    # The video patch's spatial call is the image patch with one chunk per branch of FRAMES rows.
    video_patch = RefDropAttention(RefDropSettings((0,), (0.2,), "bench"), FallbackNotice("bench"))
    for tokens, width, heads in SVD_ATTN:
        plain, patched = attention_case(FRAMES * 2, 2, tokens, width, heads, video_patch)
        lines.append(ratio_line(f"SVD spatial {tokens} tok x {width} ({heads} heads), {FRAMES} frames x 2 chunks",
                                median_times({"plain": plain, "ours": patched}, repeats), 1 + (FRAMES - 1) / FRAMES))  # fmt: skip
    return lines


def ratio_line(label, times, floor):
    ratio = times["ours"] / times["plain"]
    return (f"  {label}: plain {times['plain'] * 1e3:.1f} ms, patched {times['ours'] * 1e3:.1f} ms, "
            f"ratio {ratio:.3f}, floor {floor:.3f}, ratio/floor {ratio / floor:.3f}")  # fmt: skip


def build(config: str, patched: bool):
    """One step function for a configuration: 'unet' (SDXL forward), 'sampling' (SDXL), 'svd' (SVD sampling)."""
    g = torch.Generator().manual_seed(1)
    if config == "svd":
        model = tiny_models.tiny_unet("svd", seed=0)
        if patched:
            model = SVDTemporalRefDrop.execute(model, 0.2, 0, 0.0, 1.0).args[0]
        embeds = torch.randn(1, 1, tiny_models.TINY_SVD_CONTEXT, generator=g)
        extras = {"fps": 6, "motion_bucket_id": 127, "augmentation_level": 0.0}

        def step(size=SVD_LATENT):
            concat = torch.randn(1, 4, *size, generator=torch.Generator().manual_seed(3))
            positive = [[embeds, dict(extras, concat_latent_image=concat)]]
            negative = [[torch.zeros_like(embeds), dict(extras, concat_latent_image=torch.zeros_like(concat))]]
            latent = torch.zeros(FRAMES, 4, *size)
            comfy.sample.sample(model, torch.randn(latent.shape, generator=torch.Generator().manual_seed(2)), 1, 2.5,
                                "euler", "karras", positive, negative, latent, seed=2, disable_pbar=True)  # fmt: skip

        return step

    model = tiny_models.tiny_unet("sdxl", seed=0)
    images = PER_CHUNK
    if config == "image" and patched:
        picture = torch.rand(REFERENCES, SDXL_LATENT * 8, SDXL_LATENT * 8, 3, generator=g)
        model = ApplyRefDropImage.execute(model, tiny_models.tiny_vae(), picture, 0.3, 5, False).args[0]
    elif config == "image_floor_rows":
        images = PER_CHUNK + REFERENCES  # the floor's plain step: the reference rows as more images
    elif patched:
        model = ApplyRefDrop.execute(model, 0.3, REFERENCES, False, "", "").args[0]
    if config == "unet":
        batch = PER_CHUNK * CHUNKS
        x = torch.randn(batch, 4, SDXL_LATENT, SDXL_LATENT, generator=g)
        context = torch.randn(batch, 77, 2048, generator=g)
        y = torch.randn(batch, tiny_models.TINY_SDXL_UNET["adm_in_channels"], generator=g)
        mm.load_models_gpu([model])
        unet = model.model.diffusion_model
        options = dict(model.model_options.get("transformer_options", {}), cond_or_uncond=[1, 0])
        dtype = next(unet.parameters()).dtype  # the stand-in UNet's weights (float32), also on a GPU

        def step(size=(SDXL_LATENT, SDXL_LATENT)):
            with torch.no_grad():
                args = [t.to(DEVICE, dtype) for t in (x[..., : size[0], : size[1]], context, y)]
                unet(args[0], torch.full((batch,), 500.0, device=DEVICE), args[1], args[2],
                     transformer_options=dict(options))  # fmt: skip

        return step

    positive = [[torch.randn(images, 77, 2048, generator=g),
                 {"pooled_output": torch.randn(images, tiny_models.TINY_POOLED_DIM, generator=g)}]]  # fmt: skip
    negative = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, tiny_models.TINY_POOLED_DIM)}]]

    def step(size=(SDXL_LATENT, SDXL_LATENT)):
        latent = torch.zeros(images, 4, *size)
        comfy.sample.sample(model, torch.randn(latent.shape, generator=torch.Generator().manual_seed(2)), 1, 5.0,
                            "euler", "normal", positive, negative, latent, seed=2, disable_pbar=True)  # fmt: skip

    return step


def worker(config: str, patched: bool) -> None:
    step = build(config, patched)
    step((8, 8))  # warm-up on a small input: loads kernels without raising the peak
    print(json.dumps({"peak_bytes": step_peak_bytes(step)}))


STEP_SECTIONS = [
    ("unet", "SDXL UNet forward (Apply RefDrop)"),
    ("sampling", "SDXL whole sampling step, cfg 5 (Apply RefDrop)"),
    ("svd", "SVD whole sampling step, cfg 2.5 (SVD Temporal RefDrop)"),
]
IMAGE_SECTION = ("image", "SDXL whole sampling step, cfg 5 (Apply RefDrop (Reference Image), 1 reference picture)")


def extra_attention_seconds(repeats: int) -> float:
    """Time of the floor's extra attentions in one step: per attn1 call, chunk and reference, the guided rows'
    queries (folded into one sequence) against one reference row's keys/values, as the patch computes them."""
    model = tiny_models.tiny_unet("sdxl", seed=0).clone()
    shapes: dict = {}

    def record(q, k, v, extra_options):
        chunks = len(extra_options.get("cond_or_uncond") or [0])
        key = (q.shape[1], q.shape[2], extra_options["n_heads"], q.shape[0] // chunks, chunks)
        shapes[key] = shapes.get(key, 0) + 1
        return plain_attention(q, k, v, extra_options)

    for block in unet_blocks.transformer_blocks(model):
        for key in block.keys():
            model.set_model_attn1_replace(record, *key)
    latent = torch.zeros(PER_CHUNK + REFERENCES, 4, SDXL_LATENT, SDXL_LATENT)
    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(PER_CHUNK + REFERENCES, 77, 2048, generator=g),
                 {"pooled_output": torch.randn(PER_CHUNK + REFERENCES, tiny_models.TINY_POOLED_DIM, generator=g)}]]  # fmt: skip
    negative = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, tiny_models.TINY_POOLED_DIM)}]]
    comfy.sample.sample(model, torch.randn(latent.shape, generator=g), 1, 5.0, "euler", "normal", positive, negative,
                        latent, seed=2, disable_pbar=True)  # fmt: skip
    total = 0.0
    for (tokens, width, heads, rows, chunks), count in shapes.items():
        guided = rows - REFERENCES
        q = torch.randn(1, guided * tokens, width, generator=g).to(DEVICE, DTYPE)
        kv = torch.randn(1, tokens, width, generator=g).to(DEVICE, DTYPE)
        extra = {"n_heads": heads, "attn_precision": None}

        def one(q=q, kv=kv, extra=extra):
            with torch.no_grad():
                return plain_attention(q, kv, kv, extra)

        total += median_times({"attention": one}, repeats)["attention"] * count * chunks * REFERENCES
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=[name for name, _ in STEP_SECTIONS] + ["image", "image_floor_rows"])
    parser.add_argument("--only-image", action="store_true", help="only the reference-image section")
    parser.add_argument("--patched", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pytorch-attention", action="store_true",
                        help="PyTorch SDPA (ComfyUI's --use-pytorch-cross-attention) instead of ComfyUI's default")  # fmt: skip
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.patched)
        return

    import comfy.ldm.modules.attention as comfy_attention

    print(f"device {DEVICE}, {DTYPE}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"ComfyUI attention: {comfy_attention.optimized_attention.__name__}")  # fmt: skip
    extra = ["--pytorch-attention"] if args.pytorch_attention else []
    if not args.only_image:
        steps_section(args, extra)
    image_section(args, extra)


def peak(config: str, extra: list[str], patched: bool) -> int:
    return run_isolated("bench.refdrop", "--worker", config, *extra, *(["--patched"] if patched else []))["peak_bytes"]


def image_section(args, extra: list[str]) -> None:
    """Apply RefDrop (Reference Image) vs plain sampling, next to the floor (extra rows + extra attentions)."""
    config, label = IMAGE_SECTION
    steps = {"plain": build(config, False), "image": build(config, True), "rows": build("image_floor_rows", False)}
    times = median_times(steps, repeats=max(2, args.repeats - 1))
    attention = extra_attention_seconds(args.repeats)
    floor = times["rows"] + attention
    peaks = {"plain": peak(config, extra, False), "image": peak(config, extra, True),
             "rows": peak("image_floor_rows", extra, False)}  # fmt: skip
    print(f"\nreference image: small SDXL-layout UNet at 1024x1024 (SDXL token counts), {PER_CHUNK} images x {CHUNKS} "
          f"chunks, {REFERENCES} reference picture (one extra row per chunk)")  # fmt: skip
    print(f"  {label}: time {times['plain']:.2f} s -> {times['image']:.2f} s (ratio "
          f"{times['image'] / times['plain']:.3f}); floor {floor:.2f} s (ratio {floor / times['plain']:.3f}: plain "
          f"step with {PER_CHUNK + REFERENCES} images {times['rows']:.2f} s + extra attentions {attention:.2f} s); "
          f"ratio/floor {times['image'] / floor:.3f}")  # fmt: skip
    print(f"  step peak memory {peaks['plain'] / 2**20:.0f} MiB -> {peaks['image'] / 2**20:.0f} MiB (ratio "
          f"{peaks['image'] / peaks['plain']:.3f}); plain step with {PER_CHUNK + REFERENCES} images "
          f"{peaks['rows'] / 2**20:.0f} MiB (ratio {peaks['rows'] / peaks['plain']:.3f})")  # fmt: skip


def steps_section(args, extra: list[str]) -> None:
    print("\nattn1 call, patched vs plain (target: within 10% of the floor)")
    for line in attn1_rows(args.repeats):
        print(line)
    print(f"\nsteps: small SDXL-layout UNet at 1024x1024 (SDXL token counts 4096/1024), {PER_CHUNK} images x "
          f"{CHUNKS} chunks; SVD-layout UNet at {SVD_LATENT[1] * 8}x{SVD_LATENT[0] * 8}, {FRAMES} frames x 2 chunks "
          "(target: peak-memory ratio <= 1.10)")  # fmt: skip
    for config, label in STEP_SECTIONS:
        steps = {name: build(config, patched=name == "patched") for name in ("plain", "patched")}
        times = median_times(steps, repeats=max(2, args.repeats - 1))
        peaks = {name: peak(config, extra, name == "patched") for name in ("plain", "patched")}
        print(f"  {label}: time {times['plain']:.2f} s -> {times['patched']:.2f} s "
              f"(ratio {times['patched'] / times['plain']:.3f}); step peak memory {peaks['plain'] / 2**20:.0f} MiB -> "
              f"{peaks['patched'] / 2**20:.0f} MiB (ratio {peaks['patched'] / peaks['plain']:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
