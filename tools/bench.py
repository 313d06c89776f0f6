"""Benchmark mpnet.py: encode throughput, time to first embedding, peak memory.

    python -m tools.bench                    # fp32, bf16 and int8 on CPU
    python -m tools.bench --device cuda --compare --batch-size 128   # on a GPU, against sentence-transformers fp16
    python -m tools.bench --compare          # + sentence-transformers (torch, ONNX Runtime, OpenVINO: peers.py)
    python -m tools.bench --compare --st-model /path/to/all-mpnet-base-v2
    python -m tools.bench --train            # fine-tuning tokens/s: train.py vs its bound vs transformers

Throughput: every engine encodes the same corpus once per round, engines
interleaved within each round, and the median round is reported, so that noise
on a shared machine hits all engines alike. Start-up and peak memory: each
engine runs in a fresh process (`python -m tools.bench --child ENGINE`) that loads the
model, embeds one sentence (time to first embedding, counted from just before
the process is spawned), then encodes the corpus and reports its peak RSS.
The corpus is the STS-B test sentences from the data folder when present. With --compare, each
engine's STS-B test Spearman (all 1,379 pairs) is measured in the same run.

--train: real training tokens/s of one full fine-tuning step (Banking77 + SST-2 batches drawn by
train.py's own sampler, default batch 16), for train.py's train_step, for the bound (the forward
pass alone on the same batches, / 3: a backward costs about two forwards), for train.py with the
embeddings frozen (--freeze top-12), with the embeddings and the bottom 4 layers frozen (--freeze
top-8, without its feature cache), for train.py without attention-probability dropout
(--attention-dropout 0), for train.py --plain (the code as read, no speed path), and for Hugging
Face transformers' MPNetModel with the same mean pooling, heads, fused AdamW and batches in the same
loop. Every train.py row calls train.train_step itself. fp32, and bf16 autocast where the
CPU runs bf16 natively; rounds interleaved as above. The
JSON keeps every round's seconds; experiments/bench_train_runs.py repeats the whole bench in fresh
processes for the run-to-run spread.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from speed import memory
from reliability.flags import int_at_least
from data import DATA_ENV, read_stsb
from eval import stsb_spearman
from speed.hardware import describe, encoder_precision, native_bf16
from mpnet import SentenceEncoder
from speed import load_encoder
from speed.onednn import onednn_helps
from weights.fetch import fetch

ROOT = Path(__file__).resolve().parent.parent
# Multiply-adds per token in the encoder's linear layers: per layer q, k, v, o (4 x D x D) + FFN (2 x D x 4D).
FLOPS_PER_TOKEN = 2 * 12 * (4 * 768 * 768 + 2 * 768 * 3072)


def load_corpus(data_dir: str | None, n: int) -> tuple[list[str], str]:
    try:
        pairs = read_stsb("test", data_dir)
    except FileNotFoundError as e:
        fixture = json.loads((ROOT / "tests" / "fixtures" / "reference.json").read_text(encoding="utf-8"))
        return fixture["sentences"], f"{len(fixture['sentences'])} parity-fixture sentences ({e})"
    unique = list(dict.fromkeys(s for pair in pairs for s in pair[:2]))
    return unique[:n], f"first {min(n, len(unique))} unique STS-B test sentences"


def engines(compare: bool, device: str) -> list[str]:
    """ours-DEVICE-fp32 first (the reference of the cosine column), then, where the speed path runs fp32
    through oneDNN, ours-cpu-plain (SentenceEncoder.from_pretrained as it is), bf16 (and int8 on a CPU), then
    sentence-transformers: fp32 on CPU, fp16 (model.half(), its fast GPU setting) on a GPU; then, on a
    CPU, its ONNX Runtime and OpenVINO backends where installed (peers.py)."""
    names = [f"ours-{device}-fp32", f"ours-{device}-bf16"]
    names += ["ours-cpu-int8", "ours-cpu-auto"] if device == "cpu" else []
    if device == "cpu" and onednn_helps()[0]:
        names.insert(1, "ours-cpu-plain")  # mpnet.py as read (nn.Linear on MKL), beside the speed path's fp32
    if compare:
        names.append("st-cuda-fp16" if device == "cuda" else "st-cpu-fp32")
        if device == "cpu":
            from tools import peers

            names += peers.available()
    return names


def load_engine(name: str, st_model: str):
    """-> encode(list[str]) -> (N, 768) float32 CPU tensor."""
    who, device, precision = name.split("-")
    if who in ("onnx", "openvino"):
        from tools import peers

        return peers.load(name, Path(st_model))
    if who == "st":
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(st_model, device=device)
        if precision == "fp16":
            st.half()
        return lambda s, bs: torch.as_tensor(st.encode(s, batch_size=bs, convert_to_numpy=True)).float()
    if precision == "plain":
        enc = SentenceEncoder.from_pretrained(device=device)
    else:
        enc = load_encoder(device=device, dtype=precision)
    return lambda s, bs: enc.encode(s, batch_size=bs)


def stsb_test(encode, args: argparse.Namespace) -> float:
    """eval.stsb_spearman (STS-B test, all 1,379 pairs) for any engine's encode(sentences, batch_size);
    rows are normalised here, since not every engine promises unit length."""
    engine = SimpleNamespace(encode=lambda s, batch_size: torch.nn.functional.normalize(encode(s, batch_size), dim=1))
    return stsb_spearman(engine, "test", args.data_dir, args.batch_size)


def sync(name: str) -> None:
    if "cuda" in name:
        torch.cuda.synchronize()


def peak_rss_mb() -> float:
    """This process's peak resident memory (memory.peak_rss_mb; ru_maxrss where there is no /proc,
    in KiB on most such systems: there a child does not inherit the parent's loaded models)."""
    mb = memory.peak_rss_mb()
    return mb if mb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(name: str, args: argparse.Namespace) -> None:
    """Run in a fresh process: load, first embedding, whole corpus, report."""
    encode = load_engine(name, args.st_model)
    encode(["The first sentence."], 1)
    sync(name)
    first = time.time()
    corpus, _ = load_corpus(args.data_dir, args.sentences)
    encode(corpus, args.batch_size)
    sync(name)
    peak_mb = peak_rss_mb()
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if "cuda" in name else None
    print(json.dumps({"first_embedding_at": first, "peak_rss_mb": peak_mb, "peak_gpu_mb": gpu_mb}))


def fresh_process(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "tools.bench", "--child", name, "--sentences", str(args.sentences),
           "--batch-size", str(args.batch_size)] + (["--st-model", args.st_model] if args.st_model else [])
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    spawned = time.time()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    report = json.loads(out.strip().splitlines()[-1])
    report["startup_s"] = report.pop("first_embedding_at") - spawned
    return report


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 10, device: str = "cpu",
                  onednn: bool = False) -> float:
    """Achieved GEMM throughput in this run: the peak that %limit compares the encoder with. onednn: the
    product through oneDNN's linear kernel (speed/onednn.py), the route fp32 takes on a CPU with AVX-512."""
    if device == "cuda":
        n, reps = 8192, 50  # a GPU needs a large product to reach its peak
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    product = (lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")) if onednn else (lambda: a @ b)
    product()
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        product()
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


# ----------------------------------------------------------------------------- --train
def train_run(dtype: str, freeze: str, out: Path, data_dir: str | None, attention_dropout: float = 0.1,
              plain: bool = False):
    """train.py's own set-up (pretrained model, heads, lr groups, fused AdamW, schedule, sampler, speed path)."""
    import data
    import train

    cfg = train.TrainConfig(task_a="banking77", task_b="sst2", data_dir=data_dir, dtype=dtype, freeze=freeze,
                            no_cache=True, val_fraction=0.0, attention_dropout=attention_dropout, plain=plain,
                            out=str(out / f"{dtype}-{freeze}-{attention_dropout}-{plain}"))
    train_sets, _, _ = data.load_tasks(cfg)
    model, tokenizer = train.build(cfg, train_sets)
    with contextlib.redirect_stderr(io.StringIO()):  # setup() prints its parameter tables
        return train.setup(cfg, model, tokenizer, train_sets, resume=False)


class HFMultiTask(torch.nn.Module):
    """transformers' MPNetModel with the same mean pooling and heads: what a user would write instead."""

    def __init__(self, heads: torch.nn.ModuleDict):
        super().__init__()
        from transformers import MPNetModel
        from transformers.utils import logging

        from weights.fetch import weights_dir
        logging.set_verbosity_error()  # its load report lists the pooler we leave out on purpose
        logging.disable_progress_bar()
        self.backbone, self.heads = MPNetModel.from_pretrained(weights_dir(), add_pooling_layer=False,
                                                                     use_safetensors=True), heads

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        from mpnet import mean_pool

        pooled = mean_pool(self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state,
                           attention_mask)
        return {task: head(pooled) for task, head in self.heads.items()}


def train_engines(run, batches: list, hf_available: bool) -> dict:
    """name -> a function that runs every batch once and returns nothing."""
    import data
    import freeze
    import train
    from heads import multitask_loss

    def ours() -> None:
        freeze.train_mode(run.model)
        for pool_idx, rows in batches:
            train.train_step(run, train.make_batch(run, pool_idx, rows))

    def forward_only() -> None:
        run.model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=run.bf16):
            for pool_idx, rows in batches:
                batch = data.collate(run.tokenizer, run.pools[pool_idx], rows)
                run.model(batch["input_ids"], batch["attention_mask"])

    names = {"forward only (bound x 3)": forward_only, "train.py": ours}
    if hf_available:
        hf = HFMultiTask(copy.deepcopy(run.model.heads))
        optimizer = train.make_optimizer([
            {"params": list(hf.backbone.parameters()), "lr": run.cfg.lr, "weight_decay": run.cfg.weight_decay},
            {"params": list(hf.heads.parameters()), "lr": run.cfg.head_lr, "weight_decay": run.cfg.weight_decay}])

        def transformers_loop() -> None:
            hf.train()
            for pool_idx, rows in batches:
                batch = data.collate(run.tokenizer, run.pools[pool_idx], rows)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=run.bf16):
                    logits = hf(batch["input_ids"], batch["attention_mask"])
                loss, _ = multitask_loss(logits, batch["labels"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(hf.parameters(), run.cfg.clip)
                optimizer.step()
        names["transformers MPNetModel"] = transformers_loop
    return names


def bench_train(args: argparse.Namespace) -> dict:
    import train

    try:
        import transformers  # noqa: F401
        hf_available = True
    except ImportError:
        hf_available = False
        print("transformers is not installed: no transformers row (pip install -r requirements-bench.txt)")
    print(f"CPU: {describe()}; {torch.get_num_threads()} threads; torch {torch.__version__}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ["fp32"] + (["bf16"] if native_bf16() else []):
            run = train_run(dtype, "none", Path(tmp), args.data_dir)
            batches = list(itertools.islice(run.sampler, args.steps))
            tokens = sum(len(run.pools[pool_idx].ids[i]) for pool_idx, rows in batches for i in rows)
            engines = train_engines(run, batches, hf_available)
            frozen = train_run(dtype, "top-12", Path(tmp), args.data_dir)
            engines["train.py --freeze top-12"] = train_engines(frozen, batches, False)["train.py"]
            top8 = train_run(dtype, "top-8", Path(tmp), args.data_dir)
            engines["train.py --freeze top-8"] = train_engines(top8, batches, False)["train.py"]
            no_attn_dropout = train_run(dtype, "none", Path(tmp), args.data_dir, attention_dropout=0.0)
            engines["train.py --attention-dropout 0"] = train_engines(no_attn_dropout, batches, False)["train.py"]
            plain = train_run(dtype, "none", Path(tmp), args.data_dir, plain=True)
            engines["train.py --plain"] = train_engines(plain, batches, False)["train.py"]
            times = {name: [] for name in engines}
            for round_ in range(args.rounds + 1):  # round 0 warms up (allocates AdamW's state) and is dropped
                for name, fn in engines.items():
                    start = time.perf_counter()
                    fn()
                    if round_:
                        times[name].append(time.perf_counter() - start)
            per_s = {name: tokens / statistics.median(t) for name, t in times.items()}
            bound = per_s.pop("forward only (bound x 3)") / 3
            results[dtype] = {"tokens": tokens, "bound_tokens_per_s": bound, "tokens_per_s": per_s, "round_s": times}
            print(f"\n{dtype}: {len(batches)} steps of batch {run.cfg.batch_size}, {tokens} real tokens, "
                  f"median of {args.rounds} rounds")
            print(f"  {'engine':32} {'tokens/s':>9} {'% bound':>8} {'x transformers':>15}")
            print(f"  {'bound (forward / 3)':32} {bound:9.0f} {100:7.0f}%")
            for name, v in per_s.items():
                hf = per_s.get("transformers MPNetModel")
                print(f"  {name:32} {v:9.0f} {100 * v / bound:7.0f}% {f'{v / hf:15.2f}' if hf else '':>15}")
            del run, frozen, top8, no_attn_dropout, plain, engines
    return {"cpu": describe(), "batch_size": train.TrainConfig.batch_size, "steps": args.steps, "rounds": args.rounds, "results": results}


def chosen_engines(args: argparse.Namespace) -> list[str]:
    """The engines to run, checked before anything is loaded. Also sets args.st_model: with --compare
    and no --st-model, the fetched weights folder; for ONNX or OpenVINO engines, the folder peers.py
    exports them to."""
    if args.compare:
        try:
            import sentence_transformers  # noqa: F401
        except ImportError:
            sys.exit("--compare needs sentence-transformers: pip install -r requirements-bench.txt")
    names = engines(args.compare, args.device)
    if args.engines:
        unknown = set(args.engines.split(",")) - set(names)
        if unknown:
            sys.exit(f"--engines: {', '.join(sorted(unknown))} not available here (choose from {', '.join(names)})")
        names = args.engines.split(",")
    if args.compare and args.st_model is None:
        args.st_model = str(fetch(sentence_transformers=True))
    if any(n.split("-")[0] in ("onnx", "openvino") for n in names):
        from tools import peers

        calibration = [p[0] for p in read_stsb("train", args.data_dir)]  # OpenVINO int8; never the test split
        args.st_model = str(peers.prepare(names, Path(args.st_model), calibration))
    return names


def print_encode_table(results: dict, fp32_peak: float, gpu_bf16_peak: float | None) -> None:
    print(f"fp32 matmul peak, 2048^3 GEMM through {'oneDNN' if onednn_helps()[0] else 'MKL'} in this run: "
          f"{fp32_peak:.0f} GFLOP/s "
          f"-> encoder limit {fp32_peak * 1e9 / FLOPS_PER_TOKEN:.0f} tokens/s")
    if gpu_bf16_peak:
        print(f"GPU {torch.cuda.get_device_name()}: bf16 matmul peak, 8192^3 GEMM in this run: "
              f"{gpu_bf16_peak / 1000:.0f} TFLOP/s (the %limit of ours-cuda-bf16)")
    print(f"{'engine':18} {'sent/s':>8} {'tok/s':>8} {'x ST':>6} {'%limit':>7} {'start s':>8} "
          f"{'x ST':>6} {'RSS MB':>7} {'x ST':>6} {'cos>=':>8} {'STS-B':>6}")
    for n, r in results.items():
        # x ST: against sentence-transformers on the same device (fp32 on CPU, fp16 on a GPU)
        base = results.get("st-cuda-fp16" if "cuda" in n else "st-cpu-fp32")
        ratio = (lambda k: f"{r[k] / base[k]:6.2f}") if base else (lambda k: f"{'-':>6}")
        peak = fp32_peak if "cpu-fp32" in n else gpu_bf16_peak if n == "ours-cuda-bf16" else None
        limit = f"{100 * r['tokens_per_s'] * FLOPS_PER_TOKEN / (peak * 1e9):6.0f}%" if peak else f"{'':>7}"
        print(f"{n:18} {r['sentences_per_s']:8.1f} {r['tokens_per_s']:8.0f} {ratio('tokens_per_s')} {limit} "
              f"{r['startup_s']:8.2f} {ratio('startup_s')} {r['peak_rss_mb']:7.0f} {ratio('peak_rss_mb')} "
              f"{r['cosine_to_fp32_min']:8.5f} "
              + (f"{r['stsb_test_spearman']:6.2f}" if r["stsb_test_spearman"] is not None else f"{'-':>6}"))


def bench_encode(args: argparse.Namespace) -> dict:
    """Encode throughput (interleaved rounds), start-up and peak RSS (fresh processes), cosine to fp32."""
    names = chosen_engines(args)
    if "ours-cpu-auto" in names:  # a long job: dtype auto measures this machine first (speed/tune.py)
        from speed import tune

        tune.ensure()
    corpus, corpus_desc = load_corpus(args.data_dir, args.sentences)
    encoders = {n: load_engine(n, args.st_model) for n in names}
    tokens = sum(len(ids) for ids in SentenceEncoder.from_pretrained().tokenizer.encode(corpus))
    print(f"CPU: {describe()}" + ("" if native_bf16() else "  (no native bf16: the bf16 row is emulated)"))
    print(f"dtype='auto' here: {' - '.join(encoder_precision('auto', args.device))}")
    print(f"corpus: {corpus_desc}, {tokens} real tokens; batch {args.batch_size}; "
          f"{torch.get_num_threads()} threads; torch {torch.__version__}")

    times = {n: [] for n in names}
    embeddings = {}
    for _ in range(args.rounds):
        for n in names:
            start = time.perf_counter()
            embeddings[n] = encoders[n](corpus, args.batch_size)
            sync(n)
            times[n].append(time.perf_counter() - start)
    stsb = {n: stsb_test(encoders[n], args) for n in names} if args.compare else {}
    del encoders

    # the route ours-cpu-fp32 takes: oneDNN where speed.load_encoder swaps it in, else MKL (nn.Linear)
    fp32_peak = matmul_gflops(torch.float32, onednn=onednn_helps()[0])
    gpu_bf16_peak = matmul_gflops(torch.bfloat16, device="cuda") if args.device == "cuda" else None
    results = {}
    for n in names:
        med = statistics.median(times[n])
        starts = [fresh_process(n, args) for _ in range(args.startup_runs)]
        results[n] = {
            "sentences_per_s": len(corpus) / med, "tokens_per_s": tokens / med,
            "round_sentences_per_s": [len(corpus) / t for t in times[n]],  # the spread behind the median
            "startup_s": statistics.median(r["startup_s"] for r in starts),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in starts),
            "peak_gpu_mb": starts[0]["peak_gpu_mb"],
            "cosine_to_fp32_min": float(torch.nn.functional.cosine_similarity(
                embeddings[n], embeddings[names[0]]).min()),
            "stsb_test_spearman": stsb.get(n),
        }
    print_encode_table(results, fp32_peak, gpu_bf16_peak)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"cpu": describe(), "commit": commit or "unknown", "torch": torch.__version__, "corpus": corpus_desc,
            "tokens": tokens, "fp32_matmul_gflops": fp32_peak, "gpu_bf16_matmul_gflops": gpu_bf16_peak, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", action="store_true", help="also run sentence-transformers (if installed)")
    parser.add_argument("--st-model", default=None,
                        help="local sentence-transformers folder or Hub id for --compare (default: the weights "
                             "folder, which weights/fetch.py fills with sentence-transformers' files too)")
    parser.add_argument("--sentences", type=int_at_least(1), default=512, help="corpus size (default 512)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=32)
    parser.add_argument("--rounds", type=int_at_least(1), default=5, help="throughput rounds; the median is reported")
    parser.add_argument("--startup-runs", type=int_at_least(1), default=3, help="fresh processes per engine; median")
    parser.add_argument("--data-dir", default=None, help=f"benchmark data folder (default ${DATA_ENV} or ../shared/data)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the encoders run")
    parser.add_argument("--train", action="store_true", help="fine-tuning throughput instead of encoding")
    parser.add_argument("--steps", type=int_at_least(1), default=12, help="--train: steps per round (default 12)")
    parser.add_argument("--engines", default=None,
                        help="comma-separated engine names to run (default: all that apply), e.g. "
                             "ours-cpu-fp32,ours-cpu-int8; the first is the cosine reference")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args)
    report = bench_train(args) if args.train else bench_encode(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
