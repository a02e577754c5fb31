"""Temporal RefDrop benchmark at a Wan-like shape, all figures measured in this one run (timings interleaved):

- the self-attention call: plain attention vs plain + Temporal RefDrop (the temporal terms through the shared
  blend, with ComfyUI's attention function), next to its floor;
- a whole model call and a whole sampling step (cfg 5: two rows) of ComfyUI's real WanModel with one block at
  Wan 2.1 1.3B's width (1536, 12 heads, ffn 8960), 9 latent frames of 16x28 tokens (4032 tokens, i.e. a
  33-frame 448x256 clip) and 512 text tokens, with and without the node: time ratio and peak-memory ratio
  (peak memory: the step's extra memory, each configuration in a fresh process).

    bash scripts/host.sh bench refdrop_wan [--pytorch-attention]    (CPU; REFGUIDE_DEVICE=cuda on a GPU machine)

Floor of the call: the guided queries ((f-1)/f of all) attend to one frame's keys (1/f of all), so the extra
work is (f-1)/f^2 of the plain attention: 1 + 8/81 = 1.099 for 9 frames. Floor of the step: 1 + that extra
times the self-attention's share of the plain step (measured here). The ratios carry over to full size, where
the same holds per block (Wan 14B: 40 blocks at width 5120; 81 frames = 21 latent frames, floor 1.045).
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
import comfy.sample  # noqa: E402
import comfy.supported_models  # noqa: E402
import torch  # noqa: E402
from refguide.attention_patches.guidance import reference_feature_guidance_  # noqa: E402
from refguide.attention_patches.temporal import reference_frame_groups  # noqa: E402
from refguide.nodes.video_dit import TemporalRefDrop  # noqa: E402
from refguide_testing import tiny_models, tiny_wan  # noqa: E402

from bench._measure import median_times, run_isolated, step_peak_bytes  # noqa: E402

DEVICE = mm.get_torch_device()
ON_GPU = DEVICE.type == "cuda"
DTYPE = torch.float16 if ON_GPU else torch.float32
FRAMES, HEIGHT, WIDTH = 9, 16, 28  # latent frames, tokens per frame side (after Wan's 2x2 patches)
DIM, HEADS, FFN, TEXT_TOKENS = 1536, 12, 8960, 512
ROWS = 2  # cfg: negative + positive
TOKENS = FRAMES * HEIGHT * WIDTH


def attention_case():
    """Closures timing one self-attention call, plain and with the temporal terms (what the override adds)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(ROWS, TOKENS, DIM, generator=g).to(DEVICE, DTYPE) for _ in range(3))
    groups = reference_frame_groups(ROWS, FRAMES, HEIGHT * WIDTH, 0, 0.2)

    def attention(qs, ks, vs, *_):
        return comfy_attention.optimized_attention(qs, ks, vs, HEADS)

    def plain():
        with torch.no_grad():
            return attention(q, k, v)

    def patched():
        with torch.no_grad():
            return reference_feature_guidance_(attention(q, k, v), q, k, v, groups, attention)

    return plain, patched


def wan_block():
    """ComfyUI's real WanModel (Wan 2.1 t2v class) with one block at Wan 1.3B's width."""
    config = comfy.supported_models.WAN21_T2V(
        dict(tiny_wan.TINY_WAN, dim=DIM, num_heads=HEADS, ffn_dim=FFN, num_layers=1, text_dim=tiny_wan.TEXT_DIM)
    )
    config.set_inference_dtype(DTYPE, None)
    model = config.get_model({})
    tiny_models.init_module_(model, 0)
    return tiny_models._patcher(model)


def build(config: str, patched: bool):
    """One step function: 'call' (one model call, two rows) or 'sampling' (one sampling step, cfg 5)."""
    model = wan_block()
    if patched:
        model = TemporalRefDrop.execute(model, 0.2, 0, 0.0, 1.0, "").args[0]
    g = torch.Generator().manual_seed(1)
    text = torch.randn(1, TEXT_TOKENS, tiny_wan.TEXT_DIM, generator=g)
    if config == "call":
        mm.load_models_gpu([model])
        options = dict(model.model_options.get("transformer_options", {}), cond_or_uncond=[1, 0])
        options["wrappers"] = model.wrappers
        x = torch.randn(ROWS, 16, FRAMES, HEIGHT * 2, WIDTH * 2, generator=g)

        def step(frames=FRAMES):
            with torch.no_grad():
                sigma = torch.full((ROWS,), 0.7, device=DEVICE)
                model.model.apply_model(x[:, :, :frames].to(DEVICE), sigma, c_crossattn=text.repeat(ROWS, 1, 1).to(DEVICE),
                                        transformer_options=dict(options, sigmas=sigma))  # fmt: skip

        return step
    positive, negative = [[text, {}]], [[torch.zeros_like(text), {}]]

    def step(frames=FRAMES):
        latent = torch.zeros(1, 16, frames, HEIGHT * 2, WIDTH * 2)
        comfy.sample.sample(model, comfy.sample.prepare_noise(latent, 2), 1, 5.0, "euler", "simple", positive,
                            negative, latent, seed=2, disable_pbar=True)  # fmt: skip

    return step


def worker(config: str, patched: bool) -> None:
    step = build(config, patched)
    step(2)  # warm-up on a short clip: loads kernels without raising the peak
    print(json.dumps({"peak_bytes": step_peak_bytes(step)}))


SECTIONS = [("call", "one model call, 2 rows"), ("sampling", "whole sampling step, cfg 5")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=[name for name, _ in SECTIONS])
    parser.add_argument("--patched", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pytorch-attention", action="store_true",
                        help="PyTorch SDPA (ComfyUI's --use-pytorch-cross-attention) instead of ComfyUI's default")  # fmt: skip
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.patched)
        return
    print(f"device {DEVICE}, {DTYPE}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"ComfyUI attention: {comfy_attention.optimized_attention.__name__}")  # fmt: skip
    print(f"shape: width {DIM}, {HEADS} heads, {FRAMES} latent frames x {HEIGHT}x{WIDTH} tokens = {TOKENS} tokens, "
          f"{ROWS} rows, reference frame 0, c = 0.2")  # fmt: skip
    call_floor = 1 + (FRAMES - 1) / FRAMES**2
    plain, patched = attention_case()
    attn = median_times({"plain": plain, "ours": patched}, args.repeats)
    ratio = attn["ours"] / attn["plain"]
    print(f"\nself-attention call: plain {attn['plain'] * 1e3:.1f} ms, with Temporal RefDrop {attn['ours'] * 1e3:.1f} ms,"
          f" ratio {ratio:.3f}, floor {call_floor:.3f}, ratio/floor {ratio / call_floor:.3f}")  # fmt: skip
    extra = ["--pytorch-attention"] if args.pytorch_attention else []
    print("\nwith / without the node (target: time within 10% of the floor, peak-memory ratio <= 1.10)")
    for config, label in SECTIONS:
        steps = {name: build(config, patched=name == "patched") for name in ("plain", "patched")}
        times = median_times(steps, repeats=max(2, args.repeats - 1))
        peaks = {name: run_isolated("bench.refdrop_wan", "--worker", config, *extra,
                                    *(["--patched"] if name == "patched" else []))["peak_bytes"]
                 for name in ("plain", "patched")}  # fmt: skip
        floor = 1 + (call_floor - 1) * attn["plain"] / times["plain"]  # one self-attention call per model call
        step_ratio = times["patched"] / times["plain"]
        print(f"  {label}: time {times['plain']:.2f} s -> {times['patched']:.2f} s (ratio {step_ratio:.3f}, floor "
              f"{floor:.3f}, ratio/floor {step_ratio / floor:.3f}); peak memory {peaks['plain'] / 2**20:.0f} MiB -> "
              f"{peaks['patched'] / 2**20:.0f} MiB (ratio {peaks['patched'] / peaks['plain']:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
