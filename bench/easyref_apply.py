"""Apply EasyRef benchmark: step time and step peak memory of SDXL-shaped sampling with and without EasyRef's
decoupled cross-attention (64 extra reference tokens on every attn2) and UNet LoRA, measured in this one run, plus
the memory the reference K/V projections hold for the real SDXL layout.

    bash scripts/host.sh bench easyref_apply          (CPU; REFGUIDE_DEVICE=cuda on a GPU machine)

The UNet is a narrow SDXL-layout model (tiny_unet("sdxl")) at a 128x128 latent, so the attention layers see
SDXL's real token counts at 1024x1024 (4096 and 1024 tokens, 77 text tokens, 64 reference tokens); the EasyRef
weights are random tensors in the checkpoint's layout for that model. Target: step time at most 1.10x.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import types

from bench._measure import configure_host

configure_host(pytorch_attention="--pytorch-attention" in sys.argv)

import comfy.model_management as mm  # noqa: E402
import comfy.sample  # noqa: E402
import torch  # noqa: E402
from refguide.comfy_patches.easyref_patch import ReferenceProjections  # noqa: E402
from refguide.easyref.embeds import EasyRefEmbeds  # noqa: E402
from refguide.nodes.easyref import ApplyEasyRef  # noqa: E402
from refguide_testing import tiny_easyref, tiny_models  # noqa: E402
from refguide_testing import tiny_qwen2vl as tq  # noqa: E402

from bench._measure import median_times, run_isolated, step_peak_bytes  # noqa: E402

LATENT = 128  # 1024x1024 pixels
IMAGES = 1  # one image, cfg 5: positive and negative chunks in one UNet call
DEVICE = mm.get_torch_device()
SDXL_WIDTHS = {"narrow": 640, "wide": 1280}
SDXL_CONTEXT, LORA_RANK = 2048, 128
CHECKPOINT_ENV = "REFGUIDE_BENCH_EASYREF_CHECKPOINT"


def write_checkpoint(path: str) -> None:
    tiny_easyref.make_easyref_checkpoint_for(path, dict(tq.TINY_TEXT), "sdxl")


def easyref_stand_in(path: str):
    """What Apply EasyRef reads from an EASYREF_MODEL: the ``unet.`` tensors, fingerprint, widths."""
    from safetensors.torch import load_file

    tensors = load_file(path)
    unet = {k[len("unet.") :]: v for k, v in tensors.items() if k.startswith("unet.")}
    return types.SimpleNamespace(
        unet_state_dict=unet, fingerprint="bench", cross_dim=SDXL_CONTEXT, checkpoint_name="bench"
    )


def build(easyref_on: bool):
    model = tiny_models.tiny_unet("sdxl", seed=0)
    g = torch.Generator().manual_seed(1)
    if easyref_on:
        easyref = easyref_stand_in(os.environ[CHECKPOINT_ENV])
        embeds = EasyRefEmbeds(torch.randn(1, 64, SDXL_CONTEXT, generator=g), torch.randn(1, 64, SDXL_CONTEXT, generator=g),
                               3, "bench", "bench", "bench")  # fmt: skip
        model = ApplyEasyRef.execute(model, easyref, embeds, 1.0, 1.0, 0.0, 1.0, None).args[0]
    positive = [[torch.randn(IMAGES, 77, SDXL_CONTEXT, generator=g),
                 {"pooled_output": torch.randn(IMAGES, tiny_models.TINY_POOLED_DIM, generator=g)}]]  # fmt: skip
    negative = [[torch.zeros(1, 77, SDXL_CONTEXT), {"pooled_output": torch.zeros(1, tiny_models.TINY_POOLED_DIM)}]]

    def step(size=LATENT):
        latent = torch.zeros(IMAGES, 4, size, size)
        comfy.sample.sample(model, torch.randn(latent.shape, generator=torch.Generator().manual_seed(2)), 1, 5.0,
                            "euler", "normal", positive, negative, latent, seed=2, disable_pbar=True)  # fmt: skip

    return step


def worker(easyref_on: bool) -> None:
    step = build(easyref_on)
    step(16)  # warm-up on a small input: loads the models and kernels without raising the peak
    print(json.dumps({"peak_bytes": step_peak_bytes(step)}))


def sdxl_projection_bytes(dtype: torch.dtype) -> tuple[int, int]:
    """(parameters, bytes) of to_k_ip/to_v_ip for SDXL's 70 attn2 layers, from the module the node builds."""
    with torch.device("meta"):
        weights = {
            f"layer{i}": (torch.empty(SDXL_WIDTHS[c], SDXL_CONTEXT), torch.empty(SDXL_WIDTHS[c], SDXL_CONTEXT))
            for i, (_, c) in enumerate(tq.SDXL_BLOCKS)
        }
        module = ReferenceProjections(weights, dtype=dtype)
    params = sum(p.numel() for p in module.parameters())
    return params, params * torch.finfo(dtype).bits // 8


def sdxl_lora_params() -> int:
    """Parameters of the rank-128 UNet LoRA on SDXL's 140 attention layers (q/k/v/out; attn2 k/v read 2048)."""
    total = 0
    for _, c in tq.SDXL_BLOCKS:
        w = SDXL_WIDTHS[c]
        total += 4 * (LORA_RANK * w + w * LORA_RANK)  # attn1 q/k/v/out
        total += 2 * (LORA_RANK * w + w * LORA_RANK) + 2 * (LORA_RANK * SDXL_CONTEXT + w * LORA_RANK)  # attn2
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--easyref", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pytorch-attention", action="store_true",
                        help="use PyTorch SDPA (ComfyUI's --use-pytorch-cross-attention) instead of the default")  # fmt: skip
    args = parser.parse_args()
    if args.worker:
        worker(args.easyref)
        return

    import comfy.ldm.modules.attention as comfy_attention

    print(f"device: {DEVICE}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"ComfyUI attention: {comfy_attention.optimized_attention.__name__}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[CHECKPOINT_ENV] = os.path.join(tmp, "easyref-bench.safetensors")
        write_checkpoint(os.environ[CHECKPOINT_ENV])
        steps = {name: build(easyref_on=name == "easyref") for name in ("plain", "easyref")}
        times = median_times(steps, repeats=args.repeats)
        extra = ["--pytorch-attention"] if args.pytorch_attention else []
        peaks = {name: run_isolated("bench.easyref_apply", "--worker", *extra,
                                    *(["--easyref"] if name == "easyref" else []))["peak_bytes"]
                 for name in ("plain", "easyref")}  # fmt: skip
    print(f"\nwhole sampling step (cfg 5, {IMAGES} image: 2 rows per UNet call), SDXL-layout UNet at "
          f"{LATENT * 8}x{LATENT * 8} (token counts 4096/1024, 77 text + 64 reference tokens on every attn2)")  # fmt: skip
    print(f"  time: plain {times['plain']:.2f} s, EasyRef {times['easyref']:.2f} s, "
          f"ratio {times['easyref'] / times['plain']:.3f} (target <= 1.10)")  # fmt: skip
    print(f"  step peak memory: plain {peaks['plain'] / 2**20:.0f} MiB, EasyRef {peaks['easyref'] / 2**20:.0f} MiB, "
          f"ratio {peaks['easyref'] / peaks['plain']:.3f}")  # fmt: skip
    print("\nmemory held for the real SDXL layout (70 attn2 layers, widths 640/1280, cross dim 2048):")
    for dtype in (torch.float16, torch.float32):
        params, size = sdxl_projection_bytes(dtype)
        print(f"  reference K/V projections (to_k_ip, to_v_ip), {str(dtype)[6:]}: {params / 1e6:.1f} M parameters, "
              f"{size / 2**20:.0f} MiB (loaded with the UNet)")  # fmt: skip
    lora = sdxl_lora_params()
    print(
        f"  UNet LoRA (rank 128, 140 layers): {lora / 1e6:.1f} M parameters, {lora * 2 / 2**20:.0f} MiB in fp16 "
        "(kept on the offload device; merged into the UNet weights by ComfyUI's weight patching)"
    )


if __name__ == "__main__":
    main()
