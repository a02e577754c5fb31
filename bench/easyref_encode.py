"""Benchmark: EasyRef reference encoding, this pack's path vs the authors'-style naive path.

    bash scripts/host.sh bench easyref_encode [--sizes 1,2,4,8] [--dtype bf16|fp32]

Real Qwen2-VL-2B shapes, random weights (no download), CPU. Each path runs in its own subprocess so
its peak memory (peak resident set size sampled every 5 ms while encoding, weights included) is not
mixed with the other's.

- ours: one MLLM (vision tower + 27 layers, no LM head), the unconditional tokens computed once per
  loaded model (paid once, reported separately), per group: one encode.
- naive (what the authors' code does): two full Qwen2-VL copies in memory (one for the prefix, one to
  take the trained last layer from), full-vocabulary fp32 logits computed and thrown away, and the
  unconditional tokens encoded again for every group.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from bench._measure import configure_host

configure_host()

import psutil  # noqa: E402
import torch  # noqa: E402
from refguide.easyref import checkpoint as ckpt  # noqa: E402
from refguide.easyref import encoder, preprocess  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled)."""

    def __init__(self, interval=0.005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._proc = psutil.Process()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def _config_and_tokenizer(tmp):
    from refguide_testing import tiny_qwen2vl as tq  # the test helpers build a tokenizer with the Qwen2 special tokens

    transformers, configuration, _ = encoder.import_qwen2_vl()
    ids = tq.build_tokenizer_files(tmp)
    ids.pop("__len__")
    cfg_dict = tq.qwen2vl_config_dict(tq.REAL_TEXT, tq.REAL_VISION, 151936, ids)
    cfg_dict["torch_dtype"] = "bfloat16"
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg_dict, f)
    cfg = configuration.Qwen2VLConfig.from_pretrained(tmp, local_files_only=True)
    tok, tokens = encoder._load_tokenizer(tmp)
    return cfg, tok, tokens


def _randomize(t: torch.Tensor, name: str, g: torch.Generator) -> torch.Tensor:
    if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "ln_q.weight", "proj.3.weight")):
        return t.fill_(1.0)
    return t.normal_(0.0, 0.02, generator=g)


def _random_routed(cfg, dims: ckpt.TextDims, dtype, g) -> ckpt.RoutedCheckpoint:
    routed = ckpt.RoutedCheckpoint()
    for k, s in ckpt.expected_final_layer_shapes(dims).items():
        routed.final_layer[k] = _randomize(torch.empty(s, dtype=dtype), k, g)
    for k, s in ckpt.expected_projector_shapes(dims.hidden, 2048).items():
        routed.projector[k] = _randomize(torch.empty(s, dtype=dtype), k, g)
    routed.reference_tokens = torch.empty(64, dims.hidden, dtype=dtype).normal_(0, 1, generator=g)
    return routed


def _images(n):
    g = torch.Generator().manual_seed(0)
    sizes = [(512, 512), (768, 512), (512, 768), (1024, 1024)]
    return [torch.rand(*sizes[i % 4], 3, generator=g) for i in range(n)]


def worker_ours(sizes, dtype, tmp):
    cfg, tok, tokens = _config_and_tokenizer(tmp)
    text_cfg = encoder._text_config(cfg)
    dims = encoder.text_dims(text_cfg)
    g = torch.Generator().manual_seed(1)

    def stock():
        with torch.device("meta"):
            shapes = {}
            _, _, modeling = encoder.import_qwen2_vl()
            cls = getattr(modeling, "Qwen2VLTextModel", None) or modeling.Qwen2VLModel
            prefix = cls(encoder._with_layers(text_cfg, text_cfg.num_hidden_layers - 1))
            visual = modeling.Qwen2VisionTransformerPretrainedModel(cfg.vision_config)
        shapes.update({k: tuple(v.shape) for k, v in prefix.state_dict().items()})
        shapes.update({"visual." + k: tuple(v.shape) for k, v in visual.state_dict().items()})
        return {k: _randomize(torch.empty(s, dtype=dtype), k, g) for k, s in shapes.items()}

    mllm = encoder.assemble_mllm(cfg, stock, _random_routed(cfg, dims, dtype, g), 2048, dtype)
    model = encoder.EasyRefModel(
        mllm, tok, tokens, encoder._image_settings(tmp, cfg), {}, "bench", 2048, "bench", "bench"
    )
    with PeakRSS() as mem:
        t = time.perf_counter()
        model.unconditional()
        elapsed = time.perf_counter() - t
    print(json.dumps({"path": "ours", "n": 0, "time": elapsed, "peak": mem.peak}), flush=True)
    for n in sizes:
        images = _images(n)
        with PeakRSS() as mem:
            t = time.perf_counter()
            model.encode(images, "a photo of a person in a garden")
            model.unconditional()  # cached: free
            elapsed = time.perf_counter() - t
        print(json.dumps({"path": "ours", "n": n, "time": elapsed, "peak": mem.peak}), flush=True)


def worker_naive(sizes, dtype, tmp):
    cfg, tok, tokens = _config_and_tokenizer(tmp)
    _, _, modeling = encoder.import_qwen2_vl()
    g = torch.Generator().manual_seed(1)
    copies = []
    for _ in range(2):  # the authors' code loads the MLLM twice
        with torch.device("meta"):
            m = modeling.Qwen2VLForConditionalGeneration(cfg)
        m = m.to_empty(device="cpu").to(dtype)
        for name, p in m.named_parameters():
            _randomize(p.data, name, g)
        encoder._materialize_buffers(m)
        m.eval()
        copies.append(m)
    a, b = copies
    a_text = getattr(a.model, "language_model", a.model)
    b_text = getattr(b.model, "language_model", b.model)
    keep_b_layers = b_text.layers  # the whole second copy stays in memory
    n_layers = len(a_text.layers)
    a_text.layers = a_text.layers[: n_layers - 1]
    b_text.layers = torch.nn.ModuleList([keep_b_layers[n_layers - 1]])
    refs = torch.empty(64, cfg.vision_config.hidden_size, dtype=dtype).normal_(0, 1, generator=g)
    proj = encoder.Projector(refs.shape[1], 2048).to(dtype).eval()
    settings = encoder._image_settings(tmp, cfg)
    helper = encoder.EasyRefModel(None, tok, tokens, settings, {}, "", 2048, "", "")
    visual = a.model.visual if hasattr(a.model, "visual") else a.visual

    @torch.inference_mode()
    def encode(images, prompt):
        packed = [helper.preprocess(x) for x in images]
        ids = helper.input_ids([p.num_tokens for p in packed], prompt)
        emb = a_text.embed_tokens(ids)
        feats = []
        for p in packed:
            out = visual(p.pixel_values.to(dtype), grid_thw=torch.tensor([p.grid_thw]))
            feats.append(out if isinstance(out, torch.Tensor) else out.pooler_output)
        emb[ids == tokens.image_pad] = torch.cat(feats).to(dtype)
        pos = torch.arange(emb.shape[1]).view(1, 1, -1).expand(3, 1, -1)
        hidden = a_text(inputs_embeds=emb, position_ids=pos, use_cache=False, output_hidden_states=True)
        h = hidden[0]
        logits = a.lm_head(h).float()  # full-vocabulary fp32 logits, thrown away
        del logits
        seq = torch.cat([h, refs[None]], dim=1)
        pos = torch.arange(seq.shape[1]).view(1, 1, -1).expand(3, 1, -1)
        out = b_text(inputs_embeds=seq, position_ids=pos, use_cache=False)[0][:, -64:]
        return proj(out)

    for n in sizes:
        images = _images(n)
        with PeakRSS() as mem:
            t = time.perf_counter()
            encode(images, "a photo of a person in a garden")
            encode([torch.from_numpy(preprocess.black_image()).float()], "")  # uncond, every time
            elapsed = time.perf_counter() - t
        print(json.dumps({"path": "naive", "n": n, "time": elapsed, "peak": mem.peak}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,2,4,8", help="group sizes (the issue asks 1,2,4,8,16,32 where time allows)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--worker", choices=["ours", "naive"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.dtype == "auto":
        with open("/proc/cpuinfo") if os.path.exists("/proc/cpuinfo") else open(os.devnull) as f:
            flags = f.read()
        args.dtype = "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if args.worker:
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            (worker_ours if args.worker == "ours" else worker_naive)(sizes, dtype, tmp)
        return
    print(
        f"EasyRef encode benchmark: Qwen2-VL-2B shapes, random weights, {args.dtype}, CPU threads {torch.get_num_threads()}"
    )
    results = {}
    for path in ("ours", "naive"):
        cmd = [
            sys.executable,
            "-m",
            "bench.easyref_encode",
            "--worker",
            path,
            "--sizes",
            args.sizes,
            "--dtype",
            args.dtype,
        ]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            raise SystemExit(f"{path} worker failed")
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                results[(r["path"], r["n"])] = r
    gib = 1024**3
    if ("ours", 0) in results:
        r = results[("ours", 0)]
        print(f"ours: unconditional tokens, once per loaded model: {r['time']:.1f} s, peak {r['peak'] / gib:.2f} GiB")
    print(
        f"{'refs':>4} | {'ours s':>8} {'ours GiB':>9} | {'naive s':>8} {'naive GiB':>9} | {'mem ratio':>9} {'time ratio':>10}"
    )
    for n in sizes:
        o, v = results[("ours", n)], results[("naive", n)]
        print(
            f"{n:>4} | {o['time']:>8.1f} {o['peak'] / gib:>9.2f} | {v['time']:>8.1f} {v['peak'] / gib:>9.2f} | "
            f"{o['peak'] / v['peak']:>9.2f} {o['time'] / v['time']:>10.2f}"
        )
    if 8 in sizes:
        o, v = results[("ours", 8)], results[("naive", 8)]
        print(
            f"at 8 references: peak memory ours/naive = {o['peak'] / v['peak']:.2f} (target <= 0.55), time ours/naive = {o['time'] / v['time']:.2f}"
        )


if __name__ == "__main__":
    main()
