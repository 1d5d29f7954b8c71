"""Train GPT-2 from scratch: the 124M FineWeb-Edu reproduction on GPUs, or a tiny model on a laptop CPU.

    python train_gpt2.py --preset tiny                # 4 layers on manual.txt, bytes, CPU, a few minutes
    python fineweb.py && torchrun --standalone --nproc_per_node=8 train_gpt2.py   # GPT-2 124M, 10B tokens
    python train_gpt2.py --preset tiny --resume       # continue log/model.pt exactly where it stopped
    (multi-node: torchrun --nnodes=2 --nproc_per_node=8 --node_rank=R --master_addr=IP train_gpt2.py)

Writes log.txt ("STEP train|val|hella VALUE"), loss.png and model.pt to --log-dir; after Ctrl-C or SIGTERM
(both checkpoint first) or a kill -9, --resume continues bit-identically to an uninterrupted run.
"""
import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist

import hellaswag
from model import (GPT, GPTConfig, atomic_write, auto_device, check_device, check_output, check_sampling,
                   check_text, get_tokenizer, load_checkpoint, peak_flops, save_checkpoint, tokenizer_spec,
                   unwrap)

# --- 1. Settings: two presets, every value overridable by its flag, all checked before any work ---
PRESETS = {
    # GPT-2 (124M) on FineWeb-Edu 10B with GPT-3's hyperparameters for that size: 2**19 tokens per step
    # (B=64 x T=1024 x gradient accumulation), warmup over 715 steps, cosine to 10% of the peak at 10B tokens.
    "gpt2": dict(
        data="edu_fineweb10B", tokenizer="gpt2", n_layer=12, n_head=12, n_embd=768, vocab_multiple=64,
        batch_size=64, seq_len=1024, total_batch_size=524288, lr=6e-4, min_lr=6e-5, warmup_steps=715,
        max_steps=19073, eval_every=250, val_steps=20, ckpt_every=1000, keep_every=5000,
        prompt="Hello, I'm a language model,", sample_tokens=32, num_samples=4, temperature=1.0),
    # A small byte-level model on the bundled manual: offline, on a laptop CPU, in a few minutes.
    "tiny": dict(
        data=os.path.join(os.path.dirname(os.path.abspath(__file__)), "manual.txt"), tokenizer="byte",
        n_layer=4, n_head=4, n_embd=128, vocab_multiple=64, batch_size=8, seq_len=256, total_batch_size=4096,
        lr=3e-3, min_lr=3e-4, warmup_steps=20, max_steps=900, eval_every=150, val_steps=10, ckpt_every=100,
        keep_every=0, prompt="The ", sample_tokens=160, num_samples=2, temperature=0.8),
}

RULES = {  # flag -> (test, what it must be); NaN fails every test
    **dict.fromkeys("n_layer n_head n_embd batch_size seq_len total_batch_size max_steps vocab_multiple "
                    "val_steps stop_at hellaswag_limit".split(), (lambda v: v >= 1, "at least 1")),
    **dict.fromkeys("warmup_steps eval_every ckpt_every keep_every sample_tokens num_samples".split(),
                    (lambda v: v >= 0, "at least 0")),
    **dict.fromkeys("lr min_lr weight_decay grad_clip".split(), (lambda v: 0 <= v < math.inf, "finite >= 0")),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)")}


def parse_args(argv=None):
    """The settings: flags over the preset's values, refused in one line when bad (nothing is touched yet)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    on_off = argparse.BooleanOptionalAction
    p.add_argument("--preset", choices=PRESETS, default="gpt2", help="starting values for everything below")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="a directory of .npy token shards (from fineweb.py) or a .txt file")
    g.add_argument("--tokenizer", help="gpt2 (BPE), byte (UTF-8 bytes), or a .model file written by bpe.py")
    g.add_argument("--shuffle", action=on_off, default=True, help="seeded shard order and offsets per epoch")
    g.add_argument("--seed", type=int, default=1337)
    g = p.add_argument_group("model and optimization")
    for name in ("--n-layer", "--n-head", "--n-embd", "--max-steps", "--warmup-steps"):
        g.add_argument(name, type=int)
    g.add_argument("--batch-size", "-B", type=int, help="sequences per micro-step per process")
    g.add_argument("--seq-len", "-T", type=int, help="tokens per sequence (also the model's block_size)")
    g.add_argument("--total-batch-size", type=int, help="tokens per optimizer step (a multiple of B*T*world)")
    g.add_argument("--lr", type=float, help="peak learning rate, reached after warmup")
    g.add_argument("--min-lr", type=float, help="learning rate at the end of the cosine decay")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--dropout", type=float, default=0.0)
    g.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm (0 = off)")
    g = p.add_argument_group("speed (each one switchable, for the ablation in bench.py train)")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: the best available)")
    for name, default, what in (("--tf32", True, "TF32 matmuls"), ("--bf16", None, "bf16 autocast"),
                                ("--compile", None, "torch.compile"), ("--fused", None, "fused AdamW")):
        g.add_argument(name, action=on_off, default=default, help=f"{what} (default: on CUDA)")
    g.add_argument("--attn", choices=["flash", "plain"], default="flash")
    g.add_argument("--vocab-multiple", type=int, help="pad the vocabulary to a multiple of this (1 = none)")
    g = p.add_argument_group("evaluation, checkpoints, logs")
    g.add_argument("--eval-every", type=int, help="val loss, HellaSwag and samples every N steps (0 = never)")
    g.add_argument("--val-steps", type=int, help="val loss over this many steps' worth of tokens")
    g.add_argument("--hellaswag", action=on_off, default=True, help="HellaSwag accuracy (gpt2 tokenizer)")
    g.add_argument("--hellaswag-limit", type=int, help="score only the first N examples (default: all)")
    g.add_argument("--hellaswag-file", help="a local hellaswag_val.jsonl (default: hellaswag.py downloads)")
    for name, kind in (("--prompt", str), ("--sample-tokens", int), ("--num-samples", int)):
        g.add_argument(name, type=kind)
    g.add_argument("--temperature", type=float, help="sampling temperature (lower: likelier, blander text)")
    g.add_argument("--top-k", type=int, default=50, help="sample from the k likeliest tokens")
    g.add_argument("--log-dir", default="log")
    g.add_argument("--ckpt-every", type=int, help="write model.pt every N steps and at the end (0 = never)")
    g.add_argument("--keep-every", type=int, help="also keep log/model_STEP.pt every N steps (0 = never)")
    g.add_argument("--resume", action="store_true", help="continue the run in --log-dir from its model.pt")
    g.add_argument("--overwrite", action="store_true", help="replace the run in --log-dir with a new one")
    g.add_argument("--stop-at", type=int, help="checkpoint and exit after this step, as if interrupted")
    args = p.parse_args(argv)  # then each flag left unset takes the preset's value
    vars(args).update({k: v for k, v in PRESETS[args.preset].items() if getattr(args, k) is None})
    # Refuse bad settings, and outputs that would destroy something, before anything is read or written.
    for name, (ok, want) in RULES.items():
        if getattr(args, name) is not None and not ok(getattr(args, name)):
            fail(f"--{name.replace('_', '-')} must be {want}, not {getattr(args, name)}")
    checked("--temperature / --top-k", check_sampling, args.temperature, args.top_k)
    checked("--prompt", check_text, args.prompt, "the prompt")
    args.device = args.device and checked(f"--device {args.device}", check_device, args.device)
    if args.n_embd % args.n_head:
        fail(f"--n-embd {args.n_embd} must be divisible by --n-head {args.n_head}")
    per_step = args.batch_size * args.seq_len * int(os.environ.get("WORLD_SIZE", 1))
    if args.total_batch_size % per_step:
        fail(f"--total-batch-size {args.total_batch_size} is not a multiple of B*T*processes = {per_step}")
    if args.resume and args.overwrite:
        fail("--resume continues the run in --log-dir, --overwrite replaces it: pass one of them")
    outputs = [os.path.join(args.log_dir, name) for name in ("model.pt", "log.txt", "loss.png")]
    for path in outputs[:2]:  # a run's checkpoint, or the log of a run that wrote none
        if os.path.exists(path) and not (args.resume or args.overwrite):
            fail(f"{path} belongs to another run: add --resume to continue it or --overwrite to replace it")
    if os.path.realpath(args.data) in map(os.path.realpath, outputs):
        fail(f"--data {args.data} is one of this run's outputs: pick another --log-dir")
    for path in outputs:
        checked(f"--log-dir {args.log_dir}", check_output, path)
    return args


def checked(what, check, *values):
    """check(*values), or a one-line exit naming `what` when it refuses them (ValueError, OSError)."""
    try:
        return check(*values)
    except (ValueError, OSError) as e:
        fail(f"{what}: {e}")


def fail(message):
    """Exit with one line on stderr, no traceback (only rank 0 prints it; every rank exits)."""
    sys.exit(f"error: {message}" if int(os.environ.get("RANK", "0")) == 0 else 1)


# --- 2. Processes: one per GPU under torchrun (DDP), or a single one; the speed switches ----------
def setup_processes(args):
    """The run's shared state: who this process is (rank, world size, device), its logger, its stop flag."""
    run = SimpleNamespace(rank=0, local_rank=0, world=1, device=args.device or auto_device())
    if "RANK" in os.environ:  # set by torchrun, with LOCAL_RANK and WORLD_SIZE
        env = os.environ
        run.rank, run.local_rank, run.world = int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"])
        run.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if run.device.startswith("cuda"):
            run.device = f"cuda:{run.local_rank}"
            torch.cuda.set_device(run.device)
        # NCCL talks GPU to GPU; gloo runs on CPUs, so the DDP path also runs (and is tested) on a laptop.
        dist.init_process_group(backend="nccl" if run.device.startswith("cuda") else "gloo")
    run.device_type, run.ddp, run.master = run.device.split(":")[0], run.world > 1, run.rank == 0
    run.log = print if run.master else (lambda *a, **k: None)  # only rank 0 logs and writes files
    run.stop_requested = False  # SIGTERM (a preempted job) or Ctrl-C: finish the step, checkpoint, exit
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: setattr(run, "stop_requested", True))
    run.grad_accum = args.total_batch_size // (args.batch_size * args.seq_len * run.world)
    # Each speed switch is on by default where it helps (CUDA) and can be turned off for the ablation.
    torch.set_float32_matmul_precision("high" if args.tf32 else "highest")  # "high": TF32 tensor cores
    cuda = run.device_type == "cuda"
    run.bf16 = args.bf16 if args.bf16 is not None else cuda and torch.cuda.is_bf16_supported()
    run.compile = args.compile if args.compile is not None else cuda
    run.fused = args.fused if args.fused is not None else cuda
    run.autocast = torch.autocast(run.device_type, dtype=torch.bfloat16) if run.bf16 else nullcontext()
    return run


# --- 3. Data: token shards -> an endless stream of (x, y) batches, each process taking its own slice ---
def load_data(path, tok, tokenizer, log):
    """fineweb.py's shards (memory-mapped, all ids checked against tok) or a text -> train, val, source."""
    if os.path.isfile(path):
        return load_text(path, tok, log)
    if not os.path.isdir(path):
        fail(f"--data {path} is neither a directory of shards (made by `python fineweb.py`) nor a file")
    names = sorted(f for f in os.listdir(path) if f.endswith(".npy"))
    train, val = ([name for name in names if f"_{kind}_" in name] for kind in ("train", "val"))
    if not train:
        fail(f"no training shards (*_train_*.npy) in {path}: make them with `python fineweb.py`")
    try:  # fineweb.py names the tokenizer that made the shards; shards made otherwise get the id check
        with open(os.path.join(path, "manifest.json")) as f:
            made_with = str(json.load(f)["config"]["tokenizer"])
    except (OSError, ValueError, KeyError, TypeError):
        made_with = tokenizer
    if os.path.abspath(made_with) != os.path.abspath(tokenizer):
        fail(f"{path} was tokenized with {made_with} (its manifest.json), not --tokenizer {tokenizer}")
    shards = {}
    for name in train + val:
        file = os.path.join(path, name)
        shards[name] = shard = checked(f"cannot read the shard {file}", np.load, file, "r")
        if shard.ndim != 1 or shard.dtype.kind not in "ui":
            fail(f"{file} holds a {shard.dtype} array of shape {shard.shape}, not a 1-D list of token ids")
        if len(shard) and not 0 <= int(shard.min()) <= int(shard.max()) < tok.n_vocab:
            fail(f"{file} holds token ids from {int(shard.min())} to {int(shard.max())}, outside the "
                 f"{tok.name} tokenizer's {tok.n_vocab} ids (pass the --tokenizer that made the shards)")
    source = {"shards": [[name, len(shard)] for name, shard in shards.items()]}
    return [shards[name] for name in train], [shards[name] for name in val], source


def load_text(path, tok, log):
    """A UTF-8 text file, tokenized: the first 90% to learn from, the last 10% to measure on."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        tokens = np.array(tok.encode_ordinary(text), dtype=np.uint16 if tok.n_vocab <= 2**16 else np.uint32)
    except UnicodeDecodeError as e:
        fail(f"--data {path} is not UTF-8 text ({e.reason} at byte {e.start})")
    except MemoryError:
        fail(f"--data {path} is too big to tokenize in memory: make shards of it with `python fineweb.py`")
    split = int(0.9 * len(tokens))
    log(f"{path}: {len(text):,} characters -> {len(tokens):,} {tok.name} tokens ({split:,} for training)")
    return [tokens[:split]], [tokens[split:]], {"file": os.path.abspath(path), "bytes": os.path.getsize(path)}


class DataLoader:
    """An endless stream of batches: each epoch's shards end to end, a global batch the next B*T*world
    tokens (+1 for the shifted targets), process `rank` taking the rank-th B*T; across shard ends, so no token
    is skipped. Shuffled, each epoch has a new seeded shard order, each shard a seeded start (wrapping)."""

    def __init__(self, shards, B, T, rank=0, world=1, shuffle=True, seed=0):
        self.shards = [s for s in shards if len(s) > 0]
        self.B, self.T, self.rank, self.world, self.shuffle, self.seed = B, T, rank, world, shuffle, seed
        self.n_tokens, self.pos = sum(len(s) for s in self.shards), 0  # pos: tokens consumed so far

    def plan(self, epoch):
        """The order of the shards in this epoch and where each starts: [(shard, rotation), ...]."""
        if not self.shuffle:
            return [(s, 0) for s in self.shards]
        rng = random.Random(self.seed * 1_000_003 + epoch)  # its own generator: global RNGs stay untouched
        order = rng.sample(range(len(self.shards)), len(self.shards))
        return [(self.shards[i], rng.randrange(len(self.shards[i]))) for i in order]

    def read(self, pos, n):
        """n tokens of the stream from position pos on, as an int64 tensor."""
        pieces = []
        while n > 0:
            epoch, offset = divmod(pos, self.n_tokens)
            for shard, rotation in self.plan(epoch):  # find the shard that holds the offset
                if offset < len(shard):
                    break
                offset -= len(shard)
            start = (rotation + offset) % len(shard)
            take = min(n, len(shard) - offset, len(shard) - start)  # up to this shard's end or its wrap point
            pieces.append(np.asarray(shard[start:start + take], dtype=np.int64))
            pos, n = pos + take, n - take
        return torch.from_numpy(np.concatenate(pieces))

    def next_batch(self):
        B, T = self.B, self.T
        buf = self.read(self.pos + self.rank * B * T, B * T + 1)
        self.pos += self.world * B * T
        return buf[:-1].view(B, T), buf[1:].view(B, T)

    def state(self):
        return {"tokens_read": self.pos}

    def load_state(self, state):
        self.pos = state["tokens_read"]


def setup_data(args, run):
    """The tokenizer, the training stream, and the val split cut into rows for the val loss."""
    run.tok = checked(f"--tokenizer {args.tokenizer}", get_tokenizer, args.tokenizer)
    # The samples' prompt; an empty one starts from <|endoftext|>, which a bpe.py tokenizer may lack.
    run.prompt = checked(f"--tokenizer {args.tokenizer}", lambda: run.tok.encode_ordinary(args.prompt)
                         or [run.tok.eot_token])
    train, run.val_shards, run.data_source = load_data(args.data, run.tok, args.tokenizer, run.log)
    B, T, world = args.batch_size, args.seq_len, run.world
    run.loader = DataLoader(train, B, T, run.rank, world, args.shuffle, args.seed)
    if run.loader.n_tokens < B * T * world + 1:
        fail(f"the training data has {run.loader.n_tokens:,} tokens, fewer than one batch needs "
             f"(B*T*processes + 1 = {B * T * world + 1:,}): lower --batch-size / --seq-len or add data")
    # Val loss: over the first --val-steps x --total-batch-size tokens of the val split (the same tokens
    # whatever the number of processes), or as many as it holds; rows of B sequences, fewer if it is short.
    n_val = sum(len(s) for s in run.val_shards)
    run.val_B = max(0, min(B, (n_val - 1) // (T * world)))
    run.val_steps = min(args.val_steps * run.grad_accum * B // run.val_B,
                        (n_val - 1) // (run.val_B * T * world)) if run.val_B else 0
    if run.val_steps == 0:
        run.log(f"notice: val loss skipped: the val split ({n_val:,} tokens) is under a row per process")


# --- 4. Model, optimizer and learning rate schedule -----------------------------------------------
def make_optimizer(model, lr, weight_decay, fused=False, betas=(0.9, 0.95), eps=1e-8):
    """AdamW where only the 2-D weights (matmuls, embeddings) decay; biases and LayerNorm gains do not."""
    params = [p for p in model.parameters() if p.requires_grad]  # a shared tensor once: wte is lm_head
    groups = [dict(params=[p for p in params if p.dim() >= 2], weight_decay=weight_decay),
              dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)


def get_lr(step, max_lr, min_lr, warmup_steps, max_steps):
    """Linear warmup over warmup_steps (step 0 already gets max_lr / warmup_steps), then cosine to min_lr."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


# --- 5. Checkpoints: everything needed to continue bit-exactly, written atomically ----------------
def save(args, run, step):
    """Checkpoint after `step` steps; every process calls it, for its RNG state (what dropout draws from)."""
    rng = torch.cuda.get_rng_state(run.device) if run.device_type == "cuda" else torch.get_rng_state()
    rngs = [rng] * run.world
    if run.ddp:
        dist.all_gather_object(rngs, rng)
    if run.master:
        save_checkpoint(run.ckpt_file, run.model, run.tok, step=step, rng=rngs, args=vars(args),
                        data=run.data_source, optimizer=run.optimizer.state_dict(), loader=run.loader.state())
        if args.keep_every and step % args.keep_every == 0:
            with open(run.ckpt_file, "rb") as src, atomic_write(f"{run.ckpt_file[:-3]}_{step:05d}.pt") as dst:
                shutil.copyfileobj(src, dst)


def start_or_resume(args, run):
    """The first step: 0 with a new log, or (--resume) model.pt's once its data, tokenizer, shaping match."""
    run.log_file, run.ckpt_file = (os.path.join(args.log_dir, f) for f in ("log.txt", "model.pt"))
    if not args.resume:
        if run.master:
            os.makedirs(args.log_dir, exist_ok=True)
            open(run.log_file, "w").close()
        return 0
    _, ckpt = checked("cannot resume", load_checkpoint, run.ckpt_file)
    if not {"step", "optimizer", "loader", "rng", "args"} <= ckpt.keys() or type(ckpt["args"]) is not dict:
        fail(f"cannot resume: {run.ckpt_file} holds model weights but no training state")
    shaping = ("seed", "shuffle", "n_layer", "n_head", "n_embd", "vocab_multiple", "dropout", "seq_len",
               "total_batch_size", "lr", "min_lr", "warmup_steps", "max_steps", "weight_decay", "grad_clip")
    recorded = {f"--{key.replace('_', '-')}": (ckpt["args"].get(key), getattr(args, key)) for key in shaping}
    recorded[f"--tokenizer {args.tokenizer}"] = ckpt.get("tokenizer"), tokenizer_spec(run.tok)  # the things,
    recorded[f"--data {args.data}"] = ckpt.get("data"), run.data_source                          # not paths
    for what, (saved, given) in recorded.items():
        if saved != given:
            fail(f"cannot resume: {run.ckpt_file} was trained with {describe(saved)}, {what} is "
                 f"{describe(given)}")
    try:
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.loader.load_state(ckpt["loader"])
        rng = ckpt["rng"][run.rank % len(ckpt["rng"])]
        torch.cuda.set_rng_state(rng, run.device) if run.device_type == "cuda" else torch.set_rng_state(rng)
    except (KeyError, TypeError, ValueError, RuntimeError, ZeroDivisionError) as e:
        fail(f"cannot resume: {run.ckpt_file} holds a damaged training state ({type(e).__name__})")
    if run.master:  # drop log lines at or after the checkpoint's step (a killed run may have written them)
        kept = [line for step, _, _, line in read_log(run.log_file, run.log) if step < ckpt["step"]]
        with atomic_write(run.log_file, "w") as f:
            f.writelines(kept)
    run.log(f"resumed from {run.ckpt_file} at step {ckpt['step']}")
    return ckpt["step"]


def describe(record):
    """A tokenizer or data source as the checkpoint records it, in words."""
    if not isinstance(record, dict):
        return repr(record)
    if "merges" in record:
        return f"a bpe.py tokenizer of {len(record['merges'])} merges"
    return (f"{record['file']} ({record['bytes']:,} bytes)" if "file" in record else
            f"{len(record['shards'])} shards of {sum(n for _, n in record['shards']):,} tokens")


def read_log(log_file, log):
    """log.txt as (step, kind, value, line); a line that is not one (a damaged file) is dropped, noticed."""
    with open(log_file, "rb") if os.path.exists(log_file) else nullcontext([]) as f:
        lines = [raw.decode("utf-8", errors="replace") for raw in f]
    entries = [(int(m[1]), m[2], float(m[3]), line) for line in lines
               if (m := re.fullmatch(r"(\d+) (train|val|hella) (\d+\.\d+)\n", line))]
    if len(entries) < len(lines):
        log(f"notice: {log_file}: {len(lines) - len(entries)} damaged line(s) dropped")
    return entries


# --- 6. Evaluation: val loss, HellaSwag, samples, the plot ----------------------------------------
@torch.no_grad()
def evaluate(args, run, step):
    """Val loss, HellaSwag accuracy and samples, logged and plotted; the training state is untouched."""
    run.model.eval()
    lines = []
    if run.val_steps:  # the first val_steps batches of the val split: the same tokens every time
        loader, loss = DataLoader(run.val_shards, run.val_B, args.seq_len, run.rank, run.world, False), 0.0
        for _ in range(run.val_steps):
            x, y = (t.to(run.device) for t in loader.next_batch())
            with run.autocast:
                loss += run.fast_model(x, y)[1].float() / run.val_steps
        if run.ddp:
            dist.all_reduce(loss)
            loss /= run.world
        run.log(f"step {step} | val loss {loss.item():.4f}")
        lines.append(f"{step} val {loss.item():.4f}\n")
    if run.hellaswag:
        result = hellaswag.evaluate(unwrap(run.model), run.hellaswag, run.tok, run.device,
                                    autocast_dtype=torch.bfloat16 if run.bf16 else None)
        run.log(f"step {step} | HellaSwag acc_norm {result['acc_norm']:.4f} ({result['n']} examples)")
        lines.append(f"{step} hella {result['acc_norm']:.4f}\n")
    if run.master:
        if args.num_samples > 0 and args.sample_tokens > 0:
            idx = torch.tensor([run.prompt] * args.num_samples, dtype=torch.long, device=run.device)
            rng = torch.Generator(device=run.device).manual_seed(42)  # its own: the training RNG is untouched
            out = unwrap(run.model).generate(idx, args.sample_tokens, temperature=args.temperature,
                                             top_k=args.top_k, generator=rng)
            for i, row in enumerate(out.tolist()):
                run.log(f"sample {i}: {run.tok.decode(row)!r}")
        with open(run.log_file, "a") as f:
            f.writelines(lines)
        plot_log(run.log_file, os.path.join(args.log_dir, "loss.png"))


def load_hellaswag(args, run):
    """HellaSwag's validation examples, or None with a one-line notice saying why they are skipped."""
    found = [None if args.tokenizer == "gpt2" else f"it needs the gpt2 tokenizer, not {args.tokenizer}"]
    if run.master and not found[0]:  # rank 0 reads (or downloads) the examples and hands them to the others
        try:
            found = [hellaswag.load_examples("val", file=args.hellaswag_file, limit=args.hellaswag_limit)]
            longest = max(len(context) + max(map(len, endings))
                          for context, endings, _ in (hellaswag.render_parts(ex, run.tok) for ex in found[0]))
            if longest > args.seq_len:
                found = [f"its longest example has {longest} tokens, more than --seq-len {args.seq_len}"]
        except (ValueError, OSError) as e:
            found = [f"{(str(e) or type(e).__name__).splitlines()[0]} (--hellaswag-file takes a local copy)"]
    if run.ddp:
        dist.broadcast_object_list(found, 0)
    if not isinstance(found[0], str):
        return found[0]
    run.log(f"notice: HellaSwag skipped: {found[0]}")


def plot_log(log_file, png_file):
    """Redraw loss.png from log.txt: train and val loss, and HellaSwag accuracy when there is any."""
    from matplotlib.figure import Figure  # no pyplot: no backend to choose, no global figure to close
    series = {"train": ([], []), "val": ([], []), "hella": ([], [])}
    for step, kind, value, _ in read_log(log_file, log=lambda *a: None):
        series[kind][0].append(step)
        series[kind][1].append(value)
    panels = 1 + bool(series["hella"][0])
    fig = Figure(figsize=(6 * panels, 4), layout="tight")
    axes = fig.subplots(1, panels, squeeze=False)
    for ax, title, kinds in zip(axes[0], ("loss", "HellaSwag acc_norm"), (["train", "val"], ["hella"])):
        for kind in kinds:
            ax.plot(*series[kind], label=kind)
        if kinds == ["hella"]:
            ax.axhline(0.2955, color="gray", linestyle="--", label="OpenAI GPT-2 124M")
        ax.set(xlabel="step", title=title)
        ax.legend()
    with atomic_write(png_file) as f:
        fig.savefig(f, format="png")


# --- 7. Training: the step (with its log line) and the loop around it -----------------------------
def train_step(args, run, step):
    """One optimizer step over grad_accum micro-batches per process, and its line in the log."""
    t0 = time.time()
    run.model.train()
    run.optimizer.zero_grad(set_to_none=True)
    loss_accum = torch.zeros((), device=run.device)
    for micro_step in range(run.grad_accum):
        x, y = (t.to(run.device, non_blocking=True) for t in run.loader.next_batch())
        if run.ddp:  # all-reduce the gradients only once, in the backward of the last micro-step
            run.model.require_backward_grad_sync = micro_step == run.grad_accum - 1
        with run.autocast:
            _, loss = run.model(x, y)
        loss = loss / run.grad_accum  # the gradients add up over micro-steps: this makes their sum the mean's
        loss_accum += loss.detach()
        loss.backward()
    if run.ddp:  # for the log: the loss averaged over processes (gloo has no AVG: sum, then divide)
        dist.all_reduce(loss_accum)
        loss_accum /= run.world
    loss = loss_accum.item()
    if not math.isfinite(loss):  # before optimizer.step: the weights and the last checkpoint stay good
        fail(f"the loss is {loss} at step {step}: stopping without saving; the last good checkpoint is "
             f"{run.ckpt_file} (lower --lr, or --resume from it)")
    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), args.grad_clip or math.inf)
    lr = get_lr(step, args.lr, args.min_lr, args.warmup_steps, args.max_steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.step()
    if run.device_type == "cuda":
        torch.cuda.synchronize()  # wait for the GPU, so that the time measured is the step's
    dt = time.time() - t0
    run.step_time = dt if step <= run.start_step + 1 else 0.9 * run.step_time + 0.1 * dt  # smoothed, for ETA
    tokens_per_sec = args.total_batch_size / dt
    mfu = run.peak and unwrap(run.model).estimate_mfu(tokens_per_sec / run.world, run.peak, args.seq_len)
    left = int(run.step_time * (args.max_steps - step - 1))
    eta = f"{left // 3600}h{left % 3600 // 60:02d}m" if left >= 3600 else f"{left // 60}m{left % 60:02d}s"
    run.log(f"step {step:5d} | loss {loss:.6f} | lr {lr:.4e} | norm {norm.item():.4f} | {1000 * dt:.2f} ms | "
            f"{tokens_per_sec:,.0f} tok/s{f' | MFU {100 * mfu:.1f}%' if run.peak else ''} | ETA {eta}")
    if run.master:
        with open(run.log_file, "a") as f:
            f.write(f"{step} train {loss:.6f}\n")


def main(argv=None):
    args = parse_args(argv)
    run = setup_processes(args)
    setup_data(args, run)
    torch.manual_seed(args.seed)  # a fresh GPT, the same on every process
    net = {key: getattr(args, key) for key in "n_layer n_head n_embd dropout attn vocab_multiple".split()}
    run.model = GPT(GPTConfig(block_size=args.seq_len, vocab_size=run.tok.n_vocab, **net)).to(run.device)
    run.optimizer = make_optimizer(run.model, args.lr, args.weight_decay, fused=run.fused)
    run.start_step = start_or_resume(args, run)
    # On the final weights: compile (for training and val loss), then DDP (averaging gradients in backward).
    run.model = run.fast_model = torch.compile(run.model) if run.compile else run.model
    if run.ddp:
        device_ids = [run.local_rank] if run.device_type == "cuda" else None
        run.model = torch.nn.parallel.DistributedDataParallel(run.fast_model, device_ids=device_ids)
    run.hellaswag, run.peak = args.hellaswag and load_hellaswag(args, run), peak_flops(run.device)
    run.log(f"{unwrap(run.model).num_params():,} parameters | {args.total_batch_size:,} tokens/step = "
            f"{run.grad_accum} micro-step(s) x {run.world} process(es) x B={args.batch_size} "
            f"x T={args.seq_len} on {run.device} | tf32={args.tf32} bf16={run.bf16} compile={run.compile} "
            f"attn={args.attn} vocab={unwrap(run.model).config.padded_vocab_size} fused_adamw={run.fused}")
    if run.start_step >= args.max_steps:
        run.log(f"nothing to do: the checkpoint is at step {run.start_step}, --max-steps is {args.max_steps}")
    for step in range(run.start_step, args.max_steps):
        if args.eval_every > 0 and (step % args.eval_every == 0 or step == args.max_steps - 1):
            evaluate(args, run, step)
        train_step(args, run, step)
        done = step + 1
        stop = torch.tensor(int(run.stop_requested or done >= (args.stop_at or math.inf)), device=run.device)
        if run.ddp:  # all processes stop together
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if args.ckpt_every > 0 and (done % args.ckpt_every == 0 or done == args.max_steps or stop
                                    or (args.keep_every and done % args.keep_every == 0)):
            save(args, run, done)
        if stop:
            run.log(f"stopped after step {step}" + (f"; checkpoint {run.ckpt_file} written: continue with "
                    "--resume" if args.ckpt_every > 0 else " (no checkpoint: --ckpt-every 0)"))
            break
    if run.ddp:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
