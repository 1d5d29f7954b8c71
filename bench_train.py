"""python bench.py train: how fast train_gpt2.py trains, and why.

1. The speed ablation, cumulative, each row one more switch of train_gpt2.py on top of the row above:
   fp32 -> TF32 -> bf16 autocast -> torch.compile -> flash attention -> vocab 50304 + fused AdamW.
   Every row is a real `python train_gpt2.py ...` run on the same data, seed and model (GPT-2 vocab);
   its step time is the fastest timed step over --repeat runs (the first steps, which compile and warm up,
   are left out; the fastest is the least disturbed by whatever else the machine is doing).
       python bench.py train                                   # CPU: a small GPT-2-shaped model, T=128
       python bench.py train --size 124M --seq-len 1024 --batch-size 16 --data ../shared/data/shakespeare.txt
2. Ours vs HuggingFace on CPU: the tiny preset's model and training step (same weights, data, AdamW,
   clipping) built on model.GPT and on transformers' GPT2LMHeadModel; tokens per second and the ratio.
"""
import os
import re
import subprocess
import sys
import tempfile
import time

import torch

from bench import best_time, markdown_table

_HERE = os.path.dirname(os.path.abspath(__file__))
_SIZES = {"small": dict(n_layer=4, n_head=4, n_embd=128), "124M": dict(n_layer=12, n_head=12, n_embd=768)}
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


def add_parser(sub):
    p = sub.add_parser("train", help="train_gpt2.py: speed ablation; tiny preset vs HuggingFace on CPU")
    p.add_argument("--size", choices=_SIZES, default="small", help="model for the ablation (GPT-2 vocabulary)")
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
    p.set_defaults(run=run)


def run(args):
    if not args.skip_ablation:
        ablation(args)
    if not args.skip_hf:
        versus_huggingface(args)


# ---------------------------------------------------------------------------------------------
# 1. The ablation: one train_gpt2.py run per row
# ---------------------------------------------------------------------------------------------
def ablation(args):
    data = args.data or next(p for p in (os.path.join(_HERE, "..", "shared", "data", "shakespeare.txt"),
                                         os.path.join(_HERE, "manual.txt")) if os.path.exists(p))
    B, T = args.batch_size, args.seq_len
    size = _SIZES[args.size]
    common = ["--preset", "gpt2", "--data", data, "--tokenizer", "gpt2", "-B", B, "-T", T, "--total-batch-size",
              B * T, "--max-steps", args.steps, "--warmup-steps", 2, "--eval-every", 0, "--ckpt-every", 0,
              "--no-hellaswag", "--n-layer", size["n_layer"], "--n-head", size["n_head"], "--n-embd", size["n_embd"]]
    if args.device:
        common += ["--device", args.device]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    print(f"\nSpeed ablation: {args.size} GPT-2 shape {size}, B={B} T={T}; each row: the fastest step of "
          f"{args.repeat} runs x {args.steps - args.skip_steps} timed steps (after {args.skip_steps} untimed: "
          f"compilation, warmup); data {os.path.relpath(data)}")
    settings, flags = [], []
    for label, switch in _ABLATION:
        flags = flags + switch
        settings.append((label, list(flags)))
    best = {}  # label -> (step ms, loss, MFU, wall) of the fastest run; or an error line
    with tempfile.TemporaryDirectory() as log_dir:
        for _ in range(args.repeat):  # row after row, then again: slow spells of a shared machine hit all rows
            for label, row_flags in settings:
                cmd = [sys.executable, os.path.join(_HERE, "train_gpt2.py")] + [str(a) for a in common + row_flags]
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
