"""Temporal RefDrop benchmark at a Wan-like shape, all figures measured in this one run (timings interleaved),
for both references: a frame of the clip (``frame``) and a picture (``picture``, the node's ``image`` input):

- the self-attention call: plain attention vs plain + the node's terms (through the shared blend, with ComfyUI's
  attention function), time and peak memory, next to its floor;
- a whole model call and a whole sampling step (cfg 5: two rows) of ComfyUI's real WanModel with one block at
  Wan 2.1 1.3B's width (1536, 12 heads, ffn 8960), 9 latent frames of 16x28 tokens (4032 tokens, i.e. a
  33-frame 448x256 clip) and 512 text tokens, with and without the node: time ratio and peak-memory ratio
  (peak memory: the step's extra memory, each configuration in a fresh process).

    bash scripts/host.sh bench refdrop_wan [--pytorch-attention] [--modes frame,picture]
    (CPU; REFGUIDE_DEVICE=cuda on a GPU machine)

Floors of the call. Frame: the guided queries ((f-1)/f of all) attend to one frame's keys (1/f of all), so the
extra work is (f-1)/f^2 of the plain attention: 1 + 8/81 = 1.099 for 9 frames. Picture: every video query
attends to the picture's one frame of keys: 1 + 1/f = 1.111. Floor of the model call and the step: 1 + that
extra times the self-attention's share of the plain step (measured here); with a picture plus the picture's own
one-frame forward (a plain model call on one latent frame, measured here). The ratios carry over to full size,
where the same holds per block (Wan 14B: 40 blocks at width 5120; 81 frames = 21 latent frames, frame floor 1.045,
picture call floor 1.048).
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
from refguide.attention_patches.guidance import GuidanceGroup, Reference, Span, reference_feature_guidance_  # noqa: E402
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


MODES = ("frame", "picture")
SEED = 3


def attention_case(mode: str):
    """Closures timing one self-attention call, plain and with the node's terms (what the override adds): toward
    frame 0 of the same row (``frame``), or toward the picture row of the row's chunk (``picture``: one frame's
    keys/values from the picture forward, one row per chunk; here every row is its own chunk, as with cfg)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(ROWS, TOKENS, DIM, generator=g).to(DEVICE, DTYPE) for _ in range(3))
    if mode == "frame":
        groups = reference_frame_groups(ROWS, FRAMES, HEIGHT * WIDTH, 0, 0.2)
    else:
        keys, values = (torch.randn(ROWS, HEIGHT * WIDTH, DIM, generator=g).to(DEVICE, DTYPE) for _ in range(2))
        groups = [GuidanceGroup(Span(row, 1, 0, TOKENS), (Reference(Span(row), 0.2, keys=keys, values=values),))
                  for row in range(ROWS)]  # fmt: skip

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


def with_node(model, mode: str):
    """The model with Temporal RefDrop: reference frame 0, or a 448x256 picture (the toy Wan VAE encodes it)."""
    if mode == "plain":
        return model
    if mode == "frame":
        return TemporalRefDrop.execute(model, 0.2, 0, 0.0, 1.0, "").args[0]
    picture = torch.rand(1, HEIGHT * 16, WIDTH * 16, 3, generator=torch.Generator().manual_seed(4))
    return TemporalRefDrop.execute(model, 0.2, 0, 0.0, 1.0, "", picture, tiny_wan.tiny_wan_vae(), SEED).args[0]


def build(config: str, mode: str):
    """One step function: 'call' (one model call, two rows) or 'sampling' (one sampling step, cfg 5)."""
    model = with_node(wan_block(), mode)
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


def worker(config: str, mode: str) -> None:
    if config == "attention":  # one self-attention call (mode "plain": the frame case's plain call)
        plain, patched = attention_case("frame" if mode == "plain" else mode)
        step = plain if mode == "plain" else patched
        step()
    else:
        step = build(config, mode)
        step(2)  # warm-up on a short clip: loads kernels without raising the peak
    print(json.dumps({"peak_bytes": step_peak_bytes(step)}))


SECTIONS = [("call", "one model call, 2 rows"), ("sampling", "whole sampling step, cfg 5")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=["attention", *(name for name, _ in SECTIONS)])
    parser.add_argument("--mode", choices=["plain", *MODES], default="plain")
    parser.add_argument("--modes", default=",".join(MODES), help="references to measure: frame, picture or both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pytorch-attention", action="store_true",
                        help="PyTorch SDPA (ComfyUI's --use-pytorch-cross-attention) instead of ComfyUI's default")  # fmt: skip
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.mode)
        return
    modes = [mode for mode in args.modes.split(",") if mode]
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes takes {', '.join(MODES)} (comma-separated)")
    print(f"device {DEVICE}, {DTYPE}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"ComfyUI attention: {comfy_attention.optimized_attention.__name__}")  # fmt: skip
    print(f"shape: width {DIM}, {HEADS} heads, {FRAMES} latent frames x {HEIGHT}x{WIDTH} tokens = {TOKENS} tokens, "
          f"{ROWS} rows, c = 0.2; frame: reference frame 0; picture: one {HEIGHT * 16}x{WIDTH * 16} picture")  # fmt: skip
    extra = ["--pytorch-attention"] if args.pytorch_attention else []

    def peak(config, mode):
        return run_isolated("bench.refdrop_wan", "--worker", config, "--mode", mode, *extra)["peak_bytes"]

    call_floors = {"frame": 1 + (FRAMES - 1) / FRAMES**2, "picture": 1 + 1 / FRAMES}
    attn, attention_peaks = {}, {"plain": peak("attention", "plain")}
    for mode in modes:
        plain, patched = attention_case(mode)
        times = median_times({"plain": plain, mode: patched}, args.repeats)
        attn.setdefault("plain", times["plain"])
        attn[mode] = times[mode]
        attention_peaks[mode] = peak("attention", mode)
        ratio = times[mode] / times["plain"]
        print(f"\nself-attention call, {mode}: plain {times['plain'] * 1e3:.1f} ms, with Temporal RefDrop "
              f"{times[mode] * 1e3:.1f} ms, ratio {ratio:.3f}, floor {call_floors[mode]:.3f}, ratio/floor "
              f"{ratio / call_floors[mode]:.3f}; peak memory {attention_peaks['plain'] / 2**20:.0f} MiB -> "
              f"{attention_peaks[mode] / 2**20:.0f} MiB (ratio {attention_peaks[mode] / attention_peaks['plain']:.3f})")  # fmt: skip
    print("\nwith / without the node (target: time within 10% of the floor, peak-memory ratio <= 1.10)")
    for config, label in SECTIONS:
        steps = {name: build(config, name) for name in ("plain", *modes)}
        if "picture" in modes:
            steps["one frame"] = lambda step=steps["plain"]: step(1)  # the picture forward: a plain one-frame call
        times = median_times(steps, repeats=max(2, args.repeats - 1))
        peaks = {name: peak(config, name) for name in ("plain", *modes)}
        for mode in modes:
            # one self-attention call per model call (one block); cfg 5 here: one model call per step
            floor = 1 + (call_floors[mode] - 1) * attn["plain"] / times["plain"]
            if mode == "picture":
                floor += times["one frame"] / times["plain"]
            ratio = times[mode] / times["plain"]
            print(f"  {label}, {mode}: time {times['plain']:.2f} s -> {times[mode]:.2f} s (ratio {ratio:.3f}, floor "
                  f"{floor:.3f}, ratio/floor {ratio / floor:.3f}); peak memory {peaks['plain'] / 2**20:.0f} MiB -> "
                  f"{peaks[mode] / 2**20:.0f} MiB (ratio {peaks[mode] / peaks['plain']:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
