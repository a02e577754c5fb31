"""Temporal RefDrop on a whole sampling step of ComfyUI's real HunyuanVideo 1.5 model (one double-stream and one
single-stream block at the released width), with vs without the node, in one run: time ratio and peak-memory ratio,
next to the floor.

    bash scripts/host.sh bench refdrop_hunyuan_video [--frames F] [--size HxW] [--text T] [--repeats N]
    (CPU; REFGUIDE_DEVICE=cuda on a GPU machine)

Model: ``comfy.supported_models.HunyuanVideo15`` with hidden size 2048 = 16 heads of 128 (HunyuanVideo 1.5's),
rotary axes 16 + 56 + 56, 1x2x2 patches on its 32-channel latent, its SigLIP and ByT5 inputs (ByT5 at its fixed
1472 width), random weights. One sampling step at cfg 5 = one model call of two rows (negative, positive), each a
joint [SigLIP; ByT5; text; video] sequence; Temporal RefDrop with reference frame 0, c = 0.2.

Floor: per self-attention call the extra query-key pairs are (F-1)/F * V * (V/F + N) / (V+N)^2 of the plain call
(V video tokens in F frames, N non-video tokens); the step's floor is 1 + that times the two self-attention calls'
share of the plain step, measured here (plain attention calls of the step's shape, timed in this run).
Peak memory: the step's extra memory, each configuration in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench._measure import configure_host, median_times, run_isolated, step_peak_bytes

configure_host(pytorch_attention="--pytorch-attention" in sys.argv)

import comfy.ldm.modules.attention as comfy_attention  # noqa: E402
import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.supported_models  # noqa: E402
import torch  # noqa: E402
from refguide.nodes.video_dit import TemporalRefDrop  # noqa: E402
from refguide_testing.tiny_dits import init_weights_  # noqa: E402
from refguide_testing.tiny_video_dits import TINY_HUNYUAN_VIDEO15, hunyuan_video15_conds  # noqa: E402

DEVICE = mm.get_torch_device()
DTYPE = torch.float16 if DEVICE.type == "cuda" else torch.float32
WIDTH, HEADS, TEXT_WIDTH = 2048, 16, 64
SIGLIP_TOKENS, BYT5_TOKENS = 6, 5  # hunyuan_video15_conds


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=9, help="latent frames (default 9: a 33-frame clip)")
    parser.add_argument("--size", default="15x27", help="tokens per frame, HxW (480p is 30x53; default 15x27)")
    parser.add_argument("--text", type=int, default=256, help="prompt tokens (default 256)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", choices=["plain", "guided"])
    parser.add_argument("--pytorch-attention", action="store_true",
                        help="PyTorch SDPA (ComfyUI's --use-pytorch-cross-attention) instead of ComfyUI's default")  # fmt: skip
    return parser.parse_args(argv)


def model_with(node: bool):
    config = dict(TINY_HUNYUAN_VIDEO15, hidden_size=WIDTH, num_heads=HEADS, axes_dim=[16, 56, 56], mlp_ratio=4.0,
                  context_in_dim=TEXT_WIDTH)  # fmt: skip
    model_config = comfy.supported_models.HunyuanVideo15(config)
    model_config.set_inference_dtype(DTYPE, None)
    model = init_weights_(model_config.get_model({}), 0, std=0.02)
    patcher = comfy.model_patcher.ModelPatcher(model, DEVICE, mm.unet_offload_device())
    return TemporalRefDrop.execute(patcher, 0.2, 0, 0.0, 1.0, "").args[0] if node else patcher


def sampling_step(args, node: bool):
    model = model_with(node)
    height, width = (int(n) for n in args.size.split("x"))
    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, args.text, TEXT_WIDTH, generator=g), hunyuan_video15_conds(1, g)]]
    negative = [[torch.randn(1, args.text, TEXT_WIDTH, generator=g), hunyuan_video15_conds(1, g)]]

    def step(frames=args.frames):
        latent = torch.zeros(1, 32, frames, height * 2, width * 2)
        comfy.sample.sample(model, comfy.sample.prepare_noise(latent, 2), 1, 5.0, "euler", "simple", positive,
                            negative, latent, seed=2, disable_pbar=True)  # fmt: skip

    return step


def attention_call(args):
    """One plain joint self-attention call of the step's shape (two rows, heads-first, as HunyuanVideo calls it)."""
    height, width = (int(n) for n in args.size.split("x"))
    tokens = SIGLIP_TOKENS + BYT5_TOKENS + args.text + args.frames * height * width
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, HEADS, tokens, WIDTH // HEADS, generator=g).to(DEVICE, DTYPE) for _ in range(3))

    def call():
        with torch.no_grad():
            return comfy_attention.optimized_attention(q, k, v, HEADS, skip_reshape=True)

    return call


def main() -> None:
    args = parse()
    if args.worker:
        step = sampling_step(args, args.worker == "guided")
        step(2)  # warm-up on a short clip
        print(json.dumps({"peak_bytes": step_peak_bytes(step)}))
        return
    height, width = (int(n) for n in args.size.split("x"))
    video = args.frames * height * width
    other = SIGLIP_TOKENS + BYT5_TOKENS + args.text
    frames = args.frames
    call_extra = (frames - 1) / frames * video * (video / frames + other) / (video + other) ** 2
    print(f"device {DEVICE}, {DTYPE}, torch {torch.__version__}, {torch.get_num_threads()} threads, ComfyUI attention: "
          f"{comfy_attention.optimized_attention.__name__}")  # fmt: skip
    print(f"HunyuanVideo 1.5, 1 double + 1 single block at width {WIDTH} ({HEADS} heads of {WIDTH // HEADS}); "
          f"{other} non-video tokens ({SIGLIP_TOKENS} SigLIP, {BYT5_TOKENS} ByT5, {args.text} prompt) + {frames} latent "
          f"frames x {height}x{width} = {video} video tokens; cfg 5 (2 rows), reference frame 0, c = 0.2")  # fmt: skip
    times = median_times({"plain": sampling_step(args, False), "guided": sampling_step(args, True),
                          "attention": attention_call(args)}, args.repeats)  # fmt: skip
    share = 2 * times["attention"] / times["plain"]  # two self-attention calls a model call, one call a step
    floor = 1 + call_extra * share
    extra = ["--pytorch-attention"] if args.pytorch_attention else []
    shape = ["--frames", str(frames), "--size", args.size, "--text", str(args.text), *extra]
    peaks = {name: run_isolated("bench.refdrop_hunyuan_video", "--worker", name, *shape)["peak_bytes"]
             for name in ("plain", "guided")}  # fmt: skip
    ratio = times["guided"] / times["plain"]
    print(f"self-attention calls: {share:.1%} of the plain step; call floor {1 + call_extra:.3f}")
    print(f"whole sampling step: plain {times['plain']:.2f} s, with Temporal RefDrop {times['guided']:.2f} s: time ratio "
          f"{ratio:.3f}, floor {floor:.3f}, ratio/floor {ratio / floor:.3f}")  # fmt: skip
    print(f"peak memory: plain {peaks['plain'] / 2**20:.0f} MiB, with Temporal RefDrop {peaks['guided'] / 2**20:.0f} "
          f"MiB: ratio {peaks['guided'] / peaks['plain']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
