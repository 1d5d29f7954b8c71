"""Train GPT-2 from scratch: the 124M FineWeb-Edu reproduction on GPUs, or a tiny model on a laptop CPU.

    python train_gpt2.py --preset tiny                       # 4 layers on manual.txt, bytes, CPU, a few minutes
    python fineweb.py && torchrun --standalone --nproc_per_node=8 train_gpt2.py   # GPT-2 124M, 10B tokens
    python train_gpt2.py --preset tiny --resume              # continue log/model.pt exactly where it stopped

Multi-node: run on every node (node_rank 0..N-1, the same master address and port):
    torchrun --nnodes=2 --nproc_per_node=8 --node_rank=0 --master_addr=10.0.0.1 --master_port=29500 train_gpt2.py

With no arguments it follows the well-known GPT-2 (124M) recipe: 524,288 tokens per step (B=64 x T=1024 x
gradient accumulation), AdamW (0.9, 0.95) with weight decay 0.1 on 2-D weights, lr warmup to 6e-4 over
715 steps then cosine down to 6e-5 at step 19,073 (one pass over 10B tokens), gradient clipping at 1.0,
the vocabulary padded to 50,304. Every preset value can be changed with a flag (see --help).

The script reads top to bottom in the order things happen: settings, processes (DDP), data, model and
optimizer, checkpoints, evaluation, then the training loop in main(). Outputs go to --log-dir (log/):
    log.txt     "STEP train LOSS", "STEP val LOSS", "STEP hella ACC" lines
    loss.png    the curves, redrawn at each evaluation
    model.pt    the latest checkpoint (model, config, tokenizer, optimizer, data position, RNG states)
Stopping is safe: Ctrl-C or SIGTERM saves a checkpoint after the current step, and a kill -9 at any moment
leaves the last checkpoint intact (they are written atomically). --resume then continues the run so that
losses and weights are bit-identical to a run that was never interrupted.
"""
import argparse
import math
import os
import random
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from functools import lru_cache

import numpy as np
import torch
import torch.distributed as dist

from model import GPT, GPTConfig, auto_device, get_tokenizer, load_checkpoint, peak_flops, save_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------------------------------------
# 1. Settings: two presets, every value overridable by its flag
# ---------------------------------------------------------------------------------------------
PRESETS = {
    # GPT-2 (124M) on FineWeb-Edu 10B, as in the well-known reproduction (meant for 8 GPUs).
    "gpt2": dict(
        data="edu_fineweb10B", tokenizer="gpt2", n_layer=12, n_head=12, n_embd=768, vocab_multiple=64,
        batch_size=64, seq_len=1024, total_batch_size=524288, lr=6e-4, min_lr=6e-5, warmup_steps=715,
        max_steps=19073, eval_every=250, val_steps=20, ckpt_every=1000, keep_every=5000,
        prompt="Hello, I'm a language model,", sample_tokens=32, num_samples=4, temperature=1.0),
    # A small byte-level model on the bundled manual: offline, on a laptop CPU, in a few minutes.
    "tiny": dict(
        data=os.path.join(HERE, "manual.txt"), tokenizer="byte", n_layer=4, n_head=4, n_embd=128,
        vocab_multiple=64, batch_size=8, seq_len=256, total_batch_size=4096, lr=3e-3, min_lr=3e-4,
        warmup_steps=20, max_steps=900, eval_every=150, val_steps=10, ckpt_every=100, keep_every=0,
        prompt="The ", sample_tokens=160, num_samples=2, temperature=0.8),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="gpt2", help="starting values for everything below")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="a directory of .npy token shards (from fineweb.py) or a .txt file")
    g.add_argument("--tokenizer", choices=["gpt2", "byte"], help="for a .txt file: GPT-2 BPE or raw UTF-8 bytes")
    g.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True,
                   help="seeded new shard order and start offsets each epoch (--no-shuffle: the recipe's order)")
    g.add_argument("--seed", type=int, default=1337)
    g = p.add_argument_group("model")
    g.add_argument("--n-layer", type=int)
    g.add_argument("--n-head", type=int)
    g.add_argument("--n-embd", type=int)
    g.add_argument("--dropout", type=float, default=0.0)
    g = p.add_argument_group("optimization")
    g.add_argument("--batch-size", "-B", type=int, help="sequences per micro-step per process")
    g.add_argument("--seq-len", "-T", type=int, help="tokens per sequence (also the model's block_size)")
    g.add_argument("--total-batch-size", type=int, help="tokens per optimizer step, over all processes "
                   "and micro-steps; must be a multiple of B*T*processes")
    g.add_argument("--max-steps", type=int)
    g.add_argument("--lr", type=float, help="peak learning rate, reached after warmup")
    g.add_argument("--min-lr", type=float, help="learning rate at the end of the cosine decay")
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm (0 = off)")
    g = p.add_argument_group("speed (each one switchable, for the ablation in bench.py train)")
    g.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    g.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True, help="TF32 matmuls on CUDA")
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, help="bf16 autocast (default: on CUDA)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile (default: on CUDA)")
    g.add_argument("--attn", choices=["flash", "plain"], default="flash")
    g.add_argument("--vocab-multiple", type=int, help="pad the vocabulary to a multiple of this (1 = no padding)")
    g.add_argument("--fused", action=argparse.BooleanOptionalAction, help="fused AdamW (default: on CUDA)")
    g = p.add_argument_group("evaluation, checkpoints, logs")
    g.add_argument("--eval-every", type=int, help="val loss, HellaSwag and samples every N steps (0 = never)")
    g.add_argument("--val-steps", type=int, help="val loss over this many steps' worth of tokens")
    g.add_argument("--hellaswag", action=argparse.BooleanOptionalAction, default=True,
                   help="HellaSwag accuracy at each eval (needs the gpt2 tokenizer and its data)")
    g.add_argument("--hellaswag-limit", type=int, help="score only the first N examples (default: all 10,042)")
    g.add_argument("--hellaswag-file", help="a local hellaswag_val.jsonl (default: downloaded once by hellaswag.py)")
    g.add_argument("--prompt")
    g.add_argument("--sample-tokens", type=int)
    g.add_argument("--num-samples", type=int)
    g.add_argument("--temperature", type=float, help="sampling temperature (lower: likelier, blander text)")
    g.add_argument("--top-k", type=int, default=50, help="sample from the k likeliest tokens")
    g.add_argument("--log-dir", default="log")
    g.add_argument("--ckpt-every", type=int, help="write log/model.pt every N steps and at the end (0 = never)")
    g.add_argument("--keep-every", type=int, help="also keep a copy log/model_STEP.pt every N steps (0 = never)")
    g.add_argument("--resume", action="store_true", help="continue from log/model.pt")
    g.add_argument("--stop-at", type=int, help="checkpoint and exit after this step, as if interrupted "
                   "(split a long run into jobs; continue with --resume)")
    args = p.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def check_args(args, world):
    """Catch bad settings before any work is done; returns the number of gradient accumulation steps."""
    for name in ("n_layer", "n_head", "n_embd", "batch_size", "seq_len", "total_batch_size", "max_steps",
                 "vocab_multiple"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1")
    if args.n_embd % args.n_head:
        fail(f"--n-embd {args.n_embd} must be divisible by --n-head {args.n_head}")
    tokens_per_micro_step = args.batch_size * args.seq_len * world
    if args.total_batch_size % tokens_per_micro_step:
        fail(f"--total-batch-size {args.total_batch_size} is not a multiple of batch size x sequence length x "
             f"processes = {args.batch_size} x {args.seq_len} x {world} = {tokens_per_micro_step}")
    return args.total_batch_size // tokens_per_micro_step


def fail(message):
    """Exit with one line on stderr, no traceback (only rank 0 prints it; every rank exits)."""
    if int(os.environ.get("RANK", "0")) == 0:
        sys.exit(f"error: {message}")
    sys.exit(1)


# ---------------------------------------------------------------------------------------------
# 2. Processes: one per GPU under torchrun (DDP), or a single one
# ---------------------------------------------------------------------------------------------
def setup_distributed(device):
    """torchrun sets RANK / LOCAL_RANK / WORLD_SIZE. Returns (rank, local_rank, world, device)."""
    if "RANK" not in os.environ:
        return 0, 0, 1, device or auto_device()
    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    # NCCL talks GPU to GPU; gloo runs on CPUs, so the whole DDP path also runs (and is tested) on a laptop.
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return rank, local_rank, world, device


# ---------------------------------------------------------------------------------------------
# 3. Data: token shards -> an endless stream of (x, y) batches, each process taking its own slice
# ---------------------------------------------------------------------------------------------
def load_token_splits(args, tok, log):
    """Returns (train shards, val shards): lists of 1-D uint16 arrays (memory-mapped for .npy shards)."""
    path = args.data
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".npy"))
        train = [os.path.join(path, f) for f in files if "_train_" in f]
        val = [os.path.join(path, f) for f in files if "_val_" in f]
        if not train:
            fail(f"no training shards (*_train_*.npy) in {path}: make them with `python fineweb.py` "
                 f"(or train on a text file with --data FILE.txt)")
        load = lambda f: np.load(f, mmap_mode="r")  # noqa: E731  (the OS pages shards in as they are read)
        try:
            train, val = [load(f) for f in train], [load(f) for f in val]
        except (OSError, ValueError) as e:
            fail(f"cannot read the shards in {path}: {e}")
        for shard in train[:1] + val[:1]:  # a cheap check (not all ~20 GB): ids the tokenizer knows?
            if len(shard) and int(shard.max()) >= tok.n_vocab:
                fail(f"{shard.filename} holds token id {int(shard.max())}, beyond the {tok.name} tokenizer's "
                     f"{tok.n_vocab} ids (shards from fineweb.py need --tokenizer gpt2)")
        return train, val
    if not os.path.isfile(path):
        fail(f"--data {path} is neither a directory of shards nor a file"
             + (" (make the shards with `python fineweb.py`)" if path.endswith("edu_fineweb10B") else ""))
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    tokens = np.array(tok.encode_ordinary(text), dtype=np.uint16)
    split = int(0.9 * len(tokens))  # first 90% to learn from, last 10% to measure on
    log(f"{path}: {len(text):,} characters -> {len(tokens):,} {tok.name} tokens "
        f"({split:,} train, {len(tokens) - split:,} val)")
    return [tokens[:split]], [tokens[split:]]


class DataLoader:
    """An endless stream of batches over token shards.

    The stream is epoch 0's shards end to end, then epoch 1's, and so on. A global batch is the next
    B*T*world tokens of the stream (plus one: targets are the inputs shifted by one); process `rank` takes
    the rank-th slice of B*T. Batches run across shard ends, so no token is ever skipped. With shuffle,
    each epoch visits the shards in a new seeded order and starts each one at a seeded random offset,
    wrapping around to read the part before it last: every epoch cuts the text into different windows.
    The position is three integers (epoch, shard index in that epoch's order, offset): see state().
    """

    def __init__(self, shards, B, T, rank=0, world=1, shuffle=True, seed=0):
        self.shards = [s for s in shards if len(s) > 0]
        self.B, self.T, self.rank, self.world, self.shuffle, self.seed = B, T, rank, world, shuffle, seed
        self.n_tokens = sum(len(s) for s in self.shards)
        self.pos = (0, 0, 0)
        self.plan = lru_cache(maxsize=4)(self._plan)

    def _plan(self, epoch):
        """The order of the shards in this epoch and where each starts: [(shard id, rotation), ...]."""
        if not self.shuffle:
            return [(i, 0) for i in range(len(self.shards))]
        rng = random.Random(self.seed * 1_000_003 + epoch)  # its own generator: the global RNGs stay untouched
        order = list(range(len(self.shards)))
        rng.shuffle(order)
        return [(i, rng.randrange(len(self.shards[i]))) for i in order]

    def _advance(self, pos, n):
        """The stream position n tokens after pos."""
        epoch, index, offset = pos
        while n > 0:
            length = len(self.shards[self.plan(epoch)[index][0]])
            step = min(n, length - offset)
            offset, n = offset + step, n - step
            if offset == length:
                offset, index = 0, index + 1
                if index == len(self.shards):
                    index, epoch = 0, epoch + 1
        return epoch, index, offset

    def _read(self, pos, n):
        """n tokens of the stream from pos on, as an int64 tensor."""
        pieces = []
        while n > 0:
            shard_id, rotation = self.plan(pos[0])[pos[1]]
            shard = self.shards[shard_id]
            start = (rotation + pos[2]) % len(shard)
            take = min(n, len(shard) - pos[2], len(shard) - start)  # up to this shard's end or its wrap point
            pieces.append(np.asarray(shard[start:start + take], dtype=np.int64))
            pos, n = self._advance(pos, take), n - take
        return torch.from_numpy(np.concatenate(pieces))

    def next_batch(self):
        B, T = self.B, self.T
        buf = self._read(self._advance(self.pos, self.rank * B * T), B * T + 1)
        self.pos = self._advance(self.pos, self.world * B * T)
        return buf[:-1].view(B, T), buf[1:].view(B, T)

    def state(self):
        return dict(zip(("epoch", "index", "offset"), self.pos))

    def load_state(self, state):
        self.pos = (state["epoch"], state["index"], state["offset"])


# ---------------------------------------------------------------------------------------------
# 4. Optimizer and learning rate schedule
# ---------------------------------------------------------------------------------------------
def make_optimizer(model, lr, weight_decay, fused=False, betas=(0.9, 0.95), eps=1e-8):
    """AdamW where only the 2-D weights (matmuls, embeddings) decay; biases and LayerNorm gains do not.

    named_parameters() lists a shared tensor once, so the tied wte / lm_head matrix is one parameter.
    """
    params = [p for _, p in model.named_parameters() if p.requires_grad]
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


# ---------------------------------------------------------------------------------------------
# 5. Checkpoints: everything needed to continue bit-exactly, written atomically
# ---------------------------------------------------------------------------------------------
def rng_state(device):
    """This process's random number generator states, as types that torch.load(weights_only=True) accepts."""
    state = dict(torch=torch.get_rng_state(), python=random.getstate())
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and device.startswith("cuda"):
        torch.cuda.set_rng_state(state["cuda"], device)


def load_resume_checkpoint(path, config):
    """The checkpoint dict to continue from, or a one-line error if it is missing, corrupt or different."""
    try:
        _, ckpt = load_checkpoint(path)
    except (FileNotFoundError, ValueError) as e:
        fail(f"cannot resume: {e}")
    if not {"step", "optimizer", "loader", "rng"} <= ckpt.keys():
        fail(f"cannot resume: {path} holds model weights but no training state (optimizer, data position)")
    for key in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size", "vocab_multiple"):
        if ckpt["config"].get(key) != getattr(config, key):
            fail(f"cannot resume: {path} has {key}={ckpt['config'].get(key)}, this command asks for "
                 f"{getattr(config, key)}: pass the same model settings as the run that wrote it")
    return ckpt


def rewind_log(log_file, step):
    """On resume, drop log lines at or after the checkpoint's step (a killed run may have written them)."""
    if not os.path.exists(log_file):
        return
    with open(log_file) as f:
        kept = [line for line in f if line.split(" ", 1)[0].isdigit() and int(line.split(" ", 1)[0]) < step
                and line.endswith("\n")]
    with open(log_file + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(log_file + ".tmp", log_file)


# ---------------------------------------------------------------------------------------------
# 6. Evaluation: val loss, HellaSwag, samples, the plot
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def val_loss(model, val_shards, B, T, rank, world, steps, device, autocast):
    """Mean loss over the first `steps` batches of B x T x world tokens of the val split (the same ones every time)."""
    loader = DataLoader(val_shards, B, T, rank, world, shuffle=False)
    total = torch.zeros((), device=device)
    for _ in range(steps):
        x, y = loader.next_batch()
        with autocast:
            _, loss = model(x.to(device), y.to(device))
        total += loss.float() / steps
    if world > 1:
        dist.all_reduce(total)
        total /= world
    return total.item()


def load_hellaswag(args, tok, world, master, log):
    """HellaSwag's validation examples, or None with a one-line notice saying why they are skipped."""
    if not args.hellaswag:
        return None
    if args.tokenizer != "gpt2":
        log(f"notice: HellaSwag skipped: it is scored with the gpt2 tokenizer and this run uses {args.tokenizer}")
        return None
    examples, error = None, ""
    try:
        import hellaswag
        if master:  # rank 0 downloads the file if needed; the others read it once it is there
            examples = hellaswag.load_examples("val", file=args.hellaswag_file, limit=args.hellaswag_limit)
    except (ImportError, ValueError, FileNotFoundError, OSError) as e:
        error = str(e).splitlines()[0] if str(e) else type(e).__name__
    ok = torch.tensor(0 if error else 1)
    if world > 1:
        dist.broadcast(ok, 0)
        if ok and not master:
            examples = hellaswag.load_examples("val", file=args.hellaswag_file, limit=args.hellaswag_limit)
    if not ok:
        log(f"notice: HellaSwag skipped (train_gpt2.py takes a local copy with --hellaswag-file): {error}")
        return None
    longest = max(len(context) + max(map(len, endings))
                  for context, endings, _ in (hellaswag.render_parts(ex, tok) for ex in examples))
    if longest > args.seq_len:
        log(f"notice: HellaSwag skipped: its longest example has {longest} tokens, more than --seq-len {args.seq_len}")
        return None
    return examples


def print_samples(raw_model, tok, args, device, log):
    ids = tok.encode_ordinary(args.prompt) or [tok.eot_token]
    idx = torch.tensor([ids] * args.num_samples, dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(42)  # its own generator: training RNG untouched
    out = raw_model.generate(idx, args.sample_tokens, temperature=args.temperature, top_k=args.top_k,
                             generator=generator)
    for i, row in enumerate(out.tolist()):
        log(f"sample {i}: {tok.decode(row)!r}")


def plot_log(log_file, png_file):
    """Redraw loss.png from log.txt: train and val loss, and HellaSwag accuracy when there is any."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    series = {"train": ([], []), "val": ([], []), "hella": ([], [])}
    with open(log_file) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[1] in series:
                series[parts[1]][0].append(int(parts[0]))
                series[parts[1]][1].append(float(parts[2]))
    panels = 2 if series["hella"][0] else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    for kind in ("train", "val"):
        axes[0][0].plot(*series[kind], label=f"{kind} loss")
    axes[0][0].set(xlabel="step", ylabel="loss", title="loss")
    axes[0][0].legend()
    if panels == 2:
        axes[0][1].plot(*series["hella"], label="HellaSwag acc_norm")
        axes[0][1].axhline(0.2955, color="gray", linestyle="--", label="OpenAI GPT-2 124M")
        axes[0][1].set(xlabel="step", ylabel="accuracy", title="HellaSwag")
        axes[0][1].legend()
    fig.tight_layout()
    fig.savefig(png_file + ".tmp", format="png")
    plt.close(fig)
    os.replace(png_file + ".tmp", png_file)


# ---------------------------------------------------------------------------------------------
# 7. Training
# ---------------------------------------------------------------------------------------------
STOP_REQUESTED = False


def request_stop(signum, frame):
    """SIGTERM (a preempted job) or Ctrl-C: finish the current step, save a checkpoint, exit cleanly."""
    global STOP_REQUESTED
    STOP_REQUESTED = True


def format_duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def main(argv=None):
    args = parse_args(argv)
    rank, local_rank, world, device = setup_distributed(args.device)
    master = rank == 0  # only one process logs and writes files
    ddp = world > 1
    log = print if master else (lambda *a, **k: None)
    grad_accum_steps = check_args(args, world)
    device_type = device.split(":")[0]
    if device_type == "cuda" and not torch.cuda.is_available():
        fail("--device cuda but no CUDA GPU is available")
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    # --- speed settings ---
    torch.set_float32_matmul_precision("high" if args.tf32 else "highest")  # "high" = TF32 tensor cores
    use_bf16 = args.bf16 if args.bf16 is not None else (device_type == "cuda" and torch.cuda.is_bf16_supported())
    use_compile = args.compile if args.compile is not None else device_type == "cuda"
    use_fused = args.fused if args.fused is not None else device_type == "cuda"
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if use_bf16 else nullcontext()

    # --- data ---
    try:
        tok = get_tokenizer(args.tokenizer)
    except ValueError as e:
        fail(str(e))
    train_shards, val_shards = load_token_splits(args, tok, log)
    B, T = args.batch_size, args.seq_len
    train_loader = DataLoader(train_shards, B, T, rank, world, args.shuffle, args.seed)
    if train_loader.n_tokens < B * T * world + 1:
        fail(f"the training data has {train_loader.n_tokens:,} tokens, fewer than one batch needs "
             f"(B*T*processes + 1 = {B * T * world + 1:,}): lower --batch-size / --seq-len or add data")
    # Val loss: over the first --val-steps x --total-batch-size tokens of the val split (the same tokens
    # whatever the number of processes), or as many as it holds; rows of B sequences, fewer if it is short.
    n_val = sum(len(s) for s in val_shards)
    val_B = min(B, (n_val - 1) // (T * world)) if n_val > 0 else 0
    val_steps = min(args.val_steps * grad_accum_steps * B // max(val_B, 1),
                    (n_val - 1) // (val_B * T * world)) if val_B > 0 else 0
    if val_steps == 0:
        log(f"notice: val loss skipped: the val split ({n_val:,} tokens) is shorter than one sequence per process")

    # --- model and optimizer ---
    config = GPTConfig(block_size=T, vocab_size=tok.n_vocab, n_layer=args.n_layer, n_head=args.n_head,
                       n_embd=args.n_embd, dropout=args.dropout, attn=args.attn, vocab_multiple=args.vocab_multiple)
    torch.manual_seed(args.seed)
    raw_model = GPT(config).to(device)  # the plain module: sampling, HellaSwag and checkpoints use it
    optimizer = make_optimizer(raw_model, args.lr, args.weight_decay, fused=use_fused)
    os.makedirs(args.log_dir, exist_ok=True)
    log_file, ckpt_file = os.path.join(args.log_dir, "log.txt"), os.path.join(args.log_dir, "model.pt")
    start_step = 0
    if args.resume:
        ckpt = load_resume_checkpoint(ckpt_file, config)
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        train_loader.load_state(ckpt["loader"])
        rngs = ckpt["rng"]
        set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0], device)
        start_step = ckpt["step"]
        if master:
            rewind_log(log_file, start_step)
        log(f"resumed from {ckpt_file} at step {start_step}")
        del ckpt
    elif master:
        if os.path.exists(ckpt_file):
            log(f"notice: a fresh run: {ckpt_file} will be overwritten at the first checkpoint "
                f"(Ctrl-C now and add --resume to continue it instead)")
        if os.path.exists(log_file):
            os.remove(log_file)  # a fresh run starts a fresh log
    fast_model = torch.compile(raw_model) if use_compile else raw_model  # for the training and val loss
    model = fast_model
    if ddp:  # the wrapper that averages gradients over processes during backward
        model = torch.nn.parallel.DistributedDataParallel(fast_model,
                                                          device_ids=[local_rank] if device_type == "cuda" else None)
    hella_examples = load_hellaswag(args, tok, world, master, log)
    peak = peak_flops(device)

    log(f"{raw_model.num_params():,} parameters | {world} process(es) on {device} | B={B} T={T} | "
        f"{args.total_batch_size:,} tokens/step = {grad_accum_steps} micro-step(s) x {world} process(es) | "
        f"tf32={args.tf32} bf16={use_bf16} compile={use_compile} attn={args.attn} "
        f"vocab={config.padded_vocab_size} fused_adamw={use_fused}")

    def save(step):
        """Checkpoint after `step` optimizer steps (every process must call it: the RNG states are gathered)."""
        rngs = [rng_state(device)]
        if ddp:
            rngs = [None] * world
            dist.all_gather_object(rngs, rng_state(device))
        if master:
            save_checkpoint(ckpt_file, raw_model, tok.name, step=step, optimizer=optimizer.state_dict(),
                            loader=train_loader.state(), rng=rngs, args=vars(args))
            if args.keep_every and step % args.keep_every == 0:
                keep = os.path.join(args.log_dir, f"model_{step:05d}.pt")
                shutil.copyfile(ckpt_file, keep + ".tmp")
                os.replace(keep + ".tmp", keep)

    if start_step >= args.max_steps:
        log(f"nothing to do: the checkpoint is at step {start_step}, --max-steps is {args.max_steps}")
    step_time = None  # smoothed, for the ETA
    for step in range(start_step, args.max_steps):
        last_step = step == args.max_steps - 1

        # --- evaluate: val loss, HellaSwag, samples (no effect on the training state) ---
        if args.eval_every > 0 and (step % args.eval_every == 0 or last_step):
            model.eval()
            lines = []
            if val_steps:
                loss = val_loss(fast_model, val_shards, val_B, T, rank, world, val_steps, device, autocast)
                log(f"step {step} | val loss {loss:.4f}")
                lines.append(f"{step} val {loss:.4f}\n")
            if hella_examples:
                import hellaswag
                result = hellaswag.evaluate(raw_model, hella_examples, tok, device,
                                            autocast_dtype=torch.bfloat16 if use_bf16 else None)
                log(f"step {step} | HellaSwag acc_norm {result['acc_norm']:.4f} ({result['n']} examples)")
                lines.append(f"{step} hella {result['acc_norm']:.4f}\n")
            if master:
                if args.num_samples > 0 and args.sample_tokens > 0:
                    print_samples(raw_model, tok, args, device, log)
                with open(log_file, "a") as f:
                    f.writelines(lines)
                plot_log(log_file, os.path.join(args.log_dir, "loss.png"))

        # --- one optimizer step: grad_accum_steps micro-batches on each process ---
        model.train()
        t0 = time.time()
        optimizer.zero_grad(set_to_none=True)
        loss_accum = torch.zeros((), device=device)
        for micro_step in range(grad_accum_steps):
            x, y = train_loader.next_batch()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if ddp:  # all-reduce the gradients only once, in the backward of the last micro-step
                model.require_backward_grad_sync = micro_step == grad_accum_steps - 1
            with autocast:
                _, loss = model(x, y)
            loss = loss / grad_accum_steps  # the gradient of the mean over all micro-batches
            loss_accum += loss.detach()
            loss.backward()
        if ddp:  # for the log: the loss averaged over processes (gloo has no AVG: sum, then divide)
            dist.all_reduce(loss_accum)
            loss_accum /= world
        train_loss = loss_accum.item()
        if not math.isfinite(train_loss):
            fail(f"the loss is {train_loss} at step {step}: stopping without saving; the last good checkpoint "
                 f"is {ckpt_file} (lower --lr, or --resume from it)")
        norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), args.grad_clip if args.grad_clip > 0 else float("inf"))
        lr = get_lr(step, args.lr, args.min_lr, args.warmup_steps, args.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        if device_type == "cuda":
            torch.cuda.synchronize()
        dt = time.time() - t0

        # --- report ---
        tokens_per_sec = args.total_batch_size / dt
        step_time = dt if step_time is None or step == start_step + 1 else 0.9 * step_time + 0.1 * dt
        mfu = (f" | MFU {100 * raw_model.estimate_mfu(tokens_per_sec / world, peak, T):.1f}%" if peak else "")
        eta = format_duration(step_time * (args.max_steps - step - 1))
        log(f"step {step:5d} | loss {train_loss:.6f} | lr {lr:.4e} | norm {norm.item():.4f} | "
            f"{1000 * dt:.2f} ms | {tokens_per_sec:,.0f} tok/s{mfu} | ETA {eta}")
        if master:
            with open(log_file, "a") as f:
                f.write(f"{step} train {train_loss:.6f}\n")

        # --- checkpoint; stop if asked to (every process must agree, so the flag is all-reduced) ---
        done = step + 1
        stop = torch.tensor(int(STOP_REQUESTED or (args.stop_at is not None and done >= args.stop_at)),
                            device=device)
        if ddp:
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if args.ckpt_every > 0 and (done % args.ckpt_every == 0 or done == args.max_steps or stop
                                    or (args.keep_every and done % args.keep_every == 0)):
            save(done)
        if stop:
            log(f"stopped after step {step}" + (f"; checkpoint {ckpt_file} written: continue with --resume"
                                                if args.ckpt_every > 0 else " (no checkpoint: --ckpt-every 0)"))
            break

    if ddp:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
