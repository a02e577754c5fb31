"""Temporal RefDrop on a joint [text; video] self-attention call at a HunyuanVideo 1.5-like shape: time and peak
memory of the plain call vs the call with the node's terms (the shared blend, ComfyUI's attention function, the
(B, heads, L, d) layout HunyuanVideo calls it with), next to the floor.

    bash scripts/host.sh bench refdrop_video_families [--frames F] [--size HxW] [--text T] [--pytorch-attention]
    (CPU; REFGUIDE_DEVICE=cuda on a GPU machine)

Default shape: width 2048 = 16 heads of 128 (HunyuanVideo 1.5), a 480p 33-frame clip = 9 latent frames of 30x53
tokens (14310 video tokens) after 256 text tokens, 2 rows (cfg). On a 2-core CPU one full-size call takes minutes:
--frames / --size shrink the clip (the floor is recomputed for the shape measured).

Floor: every video query of a frame t != r (a fraction (F-1)/F of the V video tokens) attends once more, to frame
r's V/F tokens plus the T text tokens, so the extra work over the plain attention ((V+T)^2 query-key pairs) is
(F-1)/F * V * (V/F + T) / (V+T)^2: 1.111 at the default shape. Memory: the extra terms need the gathered K_r, V_r
(2 (V/F + T) tokens) and one output run of guided queries at a time (at most (F-1)/F of the call's output).
"""

from __future__ import annotations

import argparse
import json
import sys

from bench._measure import configure_host, median_times, run_isolated, step_peak_bytes

configure_host(pytorch_attention="--pytorch-attention" in sys.argv)

import comfy.ldm.modules.attention as comfy_attention  # noqa: E402
import comfy.model_management as mm  # noqa: E402
import torch  # noqa: E402
from refguide.attention_patches.guidance import reference_feature_guidance_  # noqa: E402
from refguide.attention_patches.temporal import reference_frame_groups  # noqa: E402

DEVICE = mm.get_torch_device()
DTYPE = torch.float16 if DEVICE.type == "cuda" else torch.float32
HEADS, HEAD_DIM, ROWS, STRENGTH = 16, 128, 2, 0.2


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=9, help="latent frames (default 9: a 33-frame clip)")
    parser.add_argument("--size", default="30x53", help="tokens per frame, HxW (default 30x53: 480p, 2x2 patches)")
    parser.add_argument("--text", type=int, default=256, help="text tokens in front of the video (default 256)")
    parser.add_argument("--reference-frame", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=["plain", "guided"])
    parser.add_argument("--pytorch-attention", action="store_true",
                        help="PyTorch SDPA (ComfyUI's --use-pytorch-cross-attention) instead of ComfyUI's default")  # fmt: skip
    return parser.parse_args(argv)


def attention_case(frames: int, height: int, width: int, text: int, reference_frame: int):
    """Closures for one joint self-attention call, plain and with Temporal RefDrop's terms (what the override adds
    to it: reference_frame_groups on the call's [text; video] tokens, then the shared blend)."""
    per_frame = height * width
    tokens = text + frames * per_frame
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(ROWS, HEADS, tokens, HEAD_DIM, generator=g).to(DEVICE, DTYPE) for _ in range(3))
    groups = reference_frame_groups(ROWS, frames, per_frame, reference_frame, STRENGTH, video_start=text,
                                    tokens=tokens, device=q.device)  # fmt: skip

    def attention(qs, ks, vs, mask=None):
        return comfy_attention.optimized_attention(qs, ks, vs, HEADS, mask=mask, skip_reshape=True)

    def plain():
        with torch.no_grad():
            return attention(q, k, v)

    def guided():
        with torch.no_grad():
            return reference_feature_guidance_(attention(q, k, v), q, k, v, groups, attention, 2, 1)

    return plain, guided


def floor(frames: int, video: int, text: int) -> float:
    return 1 + (frames - 1) / frames * video * (video / frames + text) / (video + text) ** 2


def main() -> None:
    args = parse()
    height, width = (int(n) for n in args.size.lower().split("x"))
    case = (args.frames, height, width, args.text, args.reference_frame)
    if args.worker:
        plain, guided = attention_case(*case)
        step = plain if args.worker == "plain" else guided
        step()  # warm-up
        print(json.dumps({"peak_bytes": step_peak_bytes(step)}))
        return
    video = args.frames * height * width
    print(f"device {DEVICE}, {DTYPE}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"ComfyUI attention: {comfy_attention.optimized_attention.__name__}")  # fmt: skip
    print(f"shape: {ROWS} rows, {HEADS} heads of {HEAD_DIM} (width {HEADS * HEAD_DIM}), {args.text} text tokens + "
          f"{args.frames} latent frames x {height}x{width} = {video} video tokens ({args.text + video} in all); "
          f"c = {STRENGTH}, reference frame {args.reference_frame}")  # fmt: skip
    plain, guided = attention_case(*case)
    times = median_times({"plain": plain, "guided": guided}, args.repeats)
    flags = ["--frames", str(args.frames), "--size", args.size, "--text", str(args.text), "--reference-frame",
             str(args.reference_frame), *(["--pytorch-attention"] if args.pytorch_attention else [])]  # fmt: skip
    peaks = {mode: run_isolated("bench.refdrop_video_families", "--worker", mode, *flags)["peak_bytes"]
             for mode in ("plain", "guided")}  # fmt: skip
    ratio, best = times["guided"] / times["plain"], floor(args.frames, video, args.text)
    print(
        f"self-attention call: plain {times['plain'] * 1e3:.0f} ms, with Temporal RefDrop "
        f"{times['guided'] * 1e3:.0f} ms: time ratio {ratio:.3f}, floor {best:.3f}, ratio/floor {ratio / best:.3f}"
    )
    print(f"peak memory: plain {peaks['plain'] / 2**20:.0f} MiB, with Temporal RefDrop {peaks['guided'] / 2**20:.0f} "
          f"MiB: ratio {peaks['guided'] / peaks['plain']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
