"""LoRA fine-tuning of a GPT-2 checkpoint: low-rank adapters, equal to HuggingFace PEFT, mergeable.

LoRA (Hu et al. 2021) freezes a pretrained weight W (out, in) and learns a low-rank update, B = 0 at first:
    y = x W^T + b + scaling * (dropout(x) A^T) B^T        A: (r, in), B: (out, r), scaling = alpha / r

    python lora.py --ckpt log/model.pt --merge                  # E2E NLG (downloaded); then the paper's table
    python lora.py --ckpt log/model.pt --data notes.txt --full  # a local file; also full fine-tuning
    python lora.py --adapter log/lora.pt --save-peft peft/      # evaluate an adapter (or a PEFT dir); export
    python lora.py --score log/predictions.txt log/references.txt --json   # score two files alone
"""
import argparse
import functools
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import model as gpt


# --- The adapter: one layer and its helpers -------------------------------------------------------
class LoRALinear(nn.Module):
    """A frozen nn.Linear plus scaling * B A. `blocks`: which equal blocks of the outputs get a rank-r pair
    (stacked along dim 0); q and v of GPT-2's fused c_attn: (True, False, True), as loralib's MergedLinear."""

    def __init__(self, base, r, alpha, dropout=0.0, rslora=False, blocks=(True,)):
        super().__init__()
        if r < 1 or base.out_features % len(blocks) or not any(blocks):
            raise ValueError(f"LoRA needs r >= 1 (got {r}) and blocks={blocks} splitting the outputs evenly")
        base.requires_grad_(False)
        self.weight, self.bias = base.weight, base.bias  # the same Parameters: names and ties unchanged
        self.in_features, self.out_features = base.in_features, base.out_features
        self.block_size = self.out_features // len(blocks)
        self.enabled = [i for i, on in enumerate(blocks) if on]
        # rsLoRA (Kalajdzievski 2023) scales by alpha / sqrt(r) so that larger ranks keep learning.
        self.r, self.scaling = r, alpha / math.sqrt(r) if rslora else alpha / r
        self.lora_A = nn.Parameter(base.weight.new_empty(len(self.enabled) * r, self.in_features))
        self.lora_B = nn.Parameter(base.weight.new_zeros(len(self.enabled) * self.block_size, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's (and nn.Linear's) default for A
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if self.merged:  # B A already lives inside self.weight
            return y
        h = F.linear(self.dropout(x), self.lora_A) * self.scaling  # scale the narrow rank-r activations
        parts = list(y.split(self.block_size, dim=-1))
        for block, h_i, B_i in zip(self.enabled, h.split(self.r, dim=-1), self.lora_B.split(self.block_size)):
            parts[block] = parts[block] + F.linear(h_i, B_i)
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]  # one block: no copy

    def delta_weight(self):
        """scaling * B A as an (out, in) matrix; zero rows for the blocks without an adapter."""
        delta, size = torch.zeros_like(self.weight), self.block_size
        for block, A_i, B_i in zip(self.enabled, self.lora_A.split(self.r), self.lora_B.split(size)):
            delta[block * size:(block + 1) * size] = B_i @ A_i
        return self.scaling * delta

    @torch.no_grad()
    def merge(self, merged=True):
        """Add B A into the weight (merged=False: take it out again); a repeated call changes nothing."""
        if self.merged != merged:
            self.weight.add_(self.delta_weight().to(self.weight.dtype), alpha=1 if merged else -1)
            self.merged = merged

    def unmerge(self):
        self.merge(False)


# Module-path suffixes, as PEFT's ("c_proj": attn.c_proj and mlp.c_proj); "qv": the paper's q, v of c_attn.
TARGETS = ("qv", "c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")


def apply_lora(model, r=4, alpha=32.0, dropout=0.0, targets=("qv",), rslora=False):
    """Freeze `model`, wrap its target nn.Linear layers in LoRALinear in place; -> the wrapped names."""
    if "qv" in targets and "c_attn" in targets:
        raise ValueError("targets 'qv' and 'c_attn' both adapt c_attn; pick one.")
    model.requires_grad_(False)
    wrapped = []
    for target in targets:
        suffix, blocks = ("c_attn", (True, False, True)) if target == "qv" else (target, (True,))
        hits = [name for name, m in model.named_modules()
                if isinstance(m, nn.Linear) and (name == suffix or name.endswith("." + suffix))]
        if not hits:
            raise ValueError(f"LoRA target '{target}' matches no nn.Linear in the model "
                             f"(standard targets: {', '.join(TARGETS)}).")
        for name in hits:
            _replace(model, name, LoRALinear(model.get_submodule(name), r, alpha, dropout, rslora, blocks))
        wrapped += hits
    return wrapped


def lora_state_dict(model):
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}


def merge_and_unwrap(model):
    """Add B A into every wrapped weight and put plain nn.Linear layers back: an ordinary GPT again."""
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            m.merge()
            linear = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
            linear.weight, linear.bias = m.weight, m.bias
            _replace(model, name, linear)
    return model


def lora_layers(model):
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def _replace(model, name, module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


# --- Data: E2E download, reading examples, tokenizing, splitting, batching ------------------------
E2E_URL = "https://raw.githubusercontent.com/microsoft/LoRA/main/examples/NLG/data/e2e/{split}.txt"


def download_e2e(cache_dir="e2e", splits=("train", "valid", "test")):
    """The E2E NLG files of the LoRA paper's repository (`meaning representation||sentence` per line)."""
    os.makedirs(cache_dir, exist_ok=True)  # (an offline run leaves it empty: no partial file)
    paths = {split: os.path.join(cache_dir, f"{split}.txt") for split in splits}
    for split, path in paths.items():
        if not os.path.exists(path):
            print(f"downloading E2E {split} -> {path}")
            gpt.download(E2E_URL.format(split=split), path,
                         hint="pass a local file instead: --data FILE (prompt||completion lines or .jsonl).")
    return paths


def read_examples(path):
    """(prompt, completion) pairs from .jsonl or `prompt||completion` lines; other text: one ("", text)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path} does not exist.")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start} cannot be decoded)") from None
    lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if path.endswith(".jsonl"):
        return [json_pair(line, f"{path}:{i}") for i, line in lines]
    if 2 * sum("||" in line for _, line in lines) <= len(lines):
        return [("", text)]
    if bad := next((i for i, line in lines if "||" not in line), None):
        raise ValueError(f"{path}:{bad}: no '||' in this line, but most lines are prompt||completion pairs")
    # The prompt keeps its "||": it tells the model where the answer starts.
    return [(p + "||", c) for p, c in (line.split("||", 1) for _, line in lines)]


def json_pair(line, where):
    try:
        row = json.loads(line)
    except ValueError:
        raise ValueError(f"{where}: not valid JSON") from None
    fields = row if isinstance(row, dict) else {}
    for key in ("prompt", "completion"):
        if not isinstance(fields.get(key), str):
            got = type(fields[key]).__name__ if key in fields else "missing"
            raise ValueError(f"{where}: expected a JSON object whose '{key}' is a string ({got})")
    return row["prompt"], row["completion"]


def tokenize(pairs, tokenizer, block_size):
    """(ids, n_prompt) per example: prompt, completion, <|endoftext|>, at most block_size + 1 tokens; plain
    text in chunks of block_size + 1 tokens overlapping by one (each token a target once)."""
    eot = tokenizer.eot_token
    if len(pairs) == 1 and pairs[0][0] == "":
        ids = tokenizer.encode_ordinary(pairs[0][1]) + [eot]
        return [(ids[i:i + block_size + 1], 0) for i in range(0, max(len(ids) - 1, 1), block_size)]
    examples = []
    for prompt, completion in pairs:
        p = tokenizer.encode_ordinary(prompt)
        ids = (p + tokenizer.encode_ordinary(completion) + [eot])[:block_size + 1]
        if len(ids) > len(p):  # at least one target left after truncation
            examples.append((ids, len(p)))
    return examples


def split_examples(examples, val_frac, seed=1337):
    """Train/val split by distinct prompt, so that val prompts are unseen in training (E2E has several
    references per prompt); plain-text chunks keep their order (the last ones are val)."""
    if len(examples) < 2:
        raise ValueError(f"need at least 2 examples for a train/val split, got {len(examples)} "
                         "(a plain-text file needs more than block_size tokens).")
    n_val = max(1, round(len(examples) * val_frac))
    if all(n_prompt == 0 for _, n_prompt in examples):
        return examples[:-n_val], examples[-n_val:]
    by_prompt = {}
    for ids, n_prompt in examples:
        by_prompt.setdefault(tuple(ids[:n_prompt]), []).append((ids, n_prompt))
    prompts = list(by_prompt)
    random.Random(seed).shuffle(prompts)
    train, val = [], []
    for p in prompts:
        (val if len(val) < n_val else train).extend(by_prompt[p])
    if not train:
        raise ValueError("too few distinct prompts for a train/val split.")
    return train, val


def collate(examples, pad_id):
    """Right-pad to the longest example; targets are -1 on prompt tokens and on padding."""
    T = max(len(ids) for ids, _ in examples) - 1
    x, y = (torch.full((len(examples), T), fill, dtype=torch.long) for fill in (pad_id, -1))
    for b, (ids, n_prompt) in enumerate(examples):
        x[b, :len(ids) - 1], y[b, :len(ids) - 1] = torch.tensor(ids[:-1]), torch.tensor(ids[1:])
        y[b, :max(n_prompt - 1, 0)] = -1  # y[i] predicts ids[i + 1]: a prompt token while i + 1 < n_prompt
    return x, y


def load_data(args, tokenizer, block_size):
    """(train examples, val examples) from --data: E2E's own train/valid files, or a split of one file."""
    if args.data == "e2e":
        paths = download_e2e(args.cache_dir, splits=("train", "valid")).values()
        train, val = (tokenize(read_examples(path), tokenizer, block_size) for path in paths)
    else:
        examples = tokenize(read_examples(args.data), tokenizer, block_size)
        train, val = split_examples(examples, args.val_frac, args.seed)
    if not train or not val:
        raise ValueError(f"{args.data} gave no usable examples.")
    print(f"data: {len(train):,} train / {len(val):,} val examples, tokenizer {tokenizer.name}")
    return train, val


# --- Training and evaluation ----------------------------------------------------------------------
def sum_loss(model, x, y, device):
    """Summed cross-entropy over the targets that are not -1 (so that micro-batches weigh by tokens)."""
    cuda = device.startswith("cuda")
    with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):  # bf16 on CUDA
        _, per_token = model(x.to(device), y.to(device), reduction="none")
    return per_token.float().sum()


def lr_at(step, lr, warmup, total):
    """Linear warmup, then cosine decay to 10% of lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min((step - warmup) / max(1, total - warmup), 1.0)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model, train_ex, val_ex, args, device, pad_id, desc="lora"):
    """AdamW on the trainable parameters; -> a dict of measurements (sizes, memory, step time, val loss)."""
    params = [p for p in model.parameters() if p.requires_grad]
    lr = args.lr if desc == "lora" else (args.full_lr or args.lr)
    optimizer = torch.optim.AdamW(params, lr, weight_decay=args.weight_decay, fused=device.startswith("cuda"))
    rng, step_times = random.Random(args.seed), []
    peak_memory(device, reset=True)
    model.train()
    for step in (bar := tqdm(range(args.steps), desc=desc, dynamic_ncols=True)):
        t0 = time.perf_counter()
        optimizer.param_groups[0]["lr"] = lr_at(step, lr, args.warmup, args.steps)  # the one group
        batches = [collate(rng.sample(train_ex, min(args.batch_size, len(train_ex))), pad_id)
                   for _ in range(args.grad_accum)]
        n_targets, loss_sum = sum(int((y != -1).sum()) for _, y in batches), 0.0
        for x, y in batches:  # gradient accumulation, each micro-batch weighted by its target tokens
            (loss := sum_loss(model, x, y, device) / n_targets).backward()
            loss_sum += loss.item()
        if not math.isfinite(loss_sum):  # nothing is written after this: the last good files stay
            raise ValueError(f"{desc} loss is {loss_sum} at step {step}: stopped (lower --lr or --alpha?)")
        torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        step_times.append(time.perf_counter() - t0)
        bar.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    timed = step_times[1:] or step_times  # the first step pays for allocator warmup
    return dict(trainable=sum(p.numel() for p in params), optimizer_bytes=optimizer_state_bytes(optimizer),
                peak_bytes=peak_memory(device), step_time=sum(timed) / len(timed),
                val_loss=evaluate(model, val_ex[:args.eval_examples], args.batch_size, device, pad_id))


@torch.no_grad()
def evaluate(model, examples, batch_size, device, pad_id):
    """Token-weighted mean validation loss over `examples`."""
    was_training = model.training
    model.eval()
    batches = [collate(examples[i:i + batch_size], pad_id) for i in range(0, len(examples), batch_size)]
    total = sum(sum_loss(model, x, y, device).item() for x, y in batches)
    model.train(was_training)
    return total / max(sum(int((y != -1).sum()) for _, y in batches), 1)


@torch.no_grad()
def complete(model, prompt_ids, tokenizer, device, max_new_tokens=64, temperature=0, **decoding):
    """One prompt's completion up to <|endoftext|>, within the context: greedy, or as `decoding` says."""
    prompt_ids = prompt_ids[-(model.config.block_size - 1):]
    max_new_tokens = min(max_new_tokens, model.config.block_size - len(prompt_ids))
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    out = model.generate(idx, max_new_tokens, temperature, stop_token=tokenizer.eot_token, **decoding)
    out = out[0, len(prompt_ids):].tolist()
    return tokenizer.decode(out[:out.index(tokenizer.eot_token)] if tokenizer.eot_token in out else out)


def print_samples(model, val, n, tokenizer, device, title):
    """Greedy completions of the first n distinct prompts of `val` (plain text: of n chunk beginnings)."""
    prompts = [list(p) for p in dict.fromkeys(tuple(ids[:k]) for ids, k in val if k)][:n]
    print(f"samples ({title}):")
    for p in prompts or [ids[:len(ids) // 4 or 1] for ids, _ in val[:n]]:
        print(f"  {tokenizer.decode(p)!r} -> {complete(model, p, tokenizer, device)!r}")


def count_params(model, name=None):
    """(trainable, total), printed if named; .parameters() yields a shared (tied) Parameter once."""
    params = list(model.parameters())
    trainable, total = sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
    if name:
        print(f"{name}: trainable params {trainable:,} of {total:,} ({100 * trainable / total:.4f}%)")
    return trainable, total


def optimizer_state_bytes(optimizer):
    return sum(t.nbytes for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))


def peak_memory(device, reset=False):
    """Bytes since the last reset=True: peak allocated on CUDA, else (Linux) the peak resident set."""
    try:
        if device.startswith("cuda"):
            return torch.cuda.reset_peak_memory_stats() if reset else torch.cuda.max_memory_allocated()
        if reset:
            Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM (Linux >= 4.0)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def fmt_bytes(n):
    return "n/a" if n is None else f"{n / 2**20:.2f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def full_fine_tune(args, lora, base_loss, train_ex, val_ex, tokenizer):
    """The same run with every weight trainable (a fresh base, written to --full-out); then LoRA vs full."""
    torch.cuda.empty_cache()  # (does nothing unless CUDA is in use)
    model = load_base(args)[0]
    count_params(model, "full fine-tuning")
    full = train(model, train_ex, val_ex, args, args.device, tokenizer.eot_token, desc="full")
    gpt.save_checkpoint(args.full_out, model, tokenizer)
    print(f"wrote full fine-tuned checkpoint {args.full_out}")
    print(f"val loss: base {base_loss:.4f} -> full fine-tuning {full['val_loss']:.4f}")
    mem = "peak CUDA memory allocated" if args.device.startswith("cuda") else "peak resident memory (RSS)"
    print("| | LoRA | full fine-tuning | LoRA / full |\n|---|---|---|---|")
    for label, key, fmt, digits in [("trainable params", "trainable", "{:,}".format, 4),
                                    ("optimizer state", "optimizer_bytes", fmt_bytes, 4),
                                    (mem, "peak_bytes", fmt_bytes, 3),
                                    ("step time", "step_time", lambda t: f"{1000 * t:.1f} ms", 3),
                                    ("final val loss", "val_loss", "{:.4f}".format, None)]:
        a, b = lora[key], full[key]
        print(f"| {label} | {fmt(a)} | {fmt(b)} | {f'{a / b:.{digits}f}' if digits and a and b else ''} |")
    return model


# --- Generation metrics: the LoRA paper's E2E NLG table -------------------------------------------
# The official E2E scorer's metrics: BLEU from sacrebleu (as MT-Eval v13a), METEOR, ROUGE-L and CIDEr from
# pycocoevalcap (the same COCO code), NIST from nist(): no library matches MT-Eval's (nltk weighs otherwise).
COCO_PUNCTUATION = set("'' ' `` ` -lrb- -rrb- -lcb- -rcb- . ? ! , : - -- ... ;".split())


def eval_groups(data, limit=None, cache_dir="e2e"):
    """[(prompt, [references])] of an E2E file ('e2e': its test split): one per distinct MR, in file order."""
    path = download_e2e(cache_dir, ("test",))["test"] if data == "e2e" else data
    pairs = read_examples(path)
    if not all(prompt for prompt, _ in pairs):
        raise ValueError(f"--eval-data {path}: expected `meaning representation||reference` lines or .jsonl")
    groups = {}
    for prompt, reference in pairs:
        groups.setdefault(prompt, []).append(" ".join(reference.split()))
    return list(groups.items())[:limit]


def eval_generation(model, groups, tokenizer, args, suffix=""):
    """Decode one output per group (beam search, or greedy), write the scorer's files; -> the metrics."""
    options = {} if args.greedy else dict(num_beams=args.beams, length_penalty=args.length_penalty,
                                          no_repeat_ngram_size=args.no_repeat_ngram)
    outputs = [" ".join(complete(model, tokenizer.encode_ordinary(prompt), tokenizer, args.device,
                                 args.max_new_tokens, **options).split())
               for prompt, _ in tqdm(groups, desc="decoding", unit="ex", dynamic_ncols=True)]
    references = [refs for _, refs in groups]
    # The official scorer's layout: one output per line; references one per line, an empty line between.
    with gpt.atomic_write(os.path.join(args.log_dir, f"predictions{suffix}.txt"), "w") as f:
        f.write("".join(p + "\n" for p in outputs))
    with gpt.atomic_write(os.path.join(args.log_dir, "references.txt"), "w") as f:
        f.write("\n".join("".join(r + "\n" for r in refs) for refs in references))
    print(f"wrote {os.path.join(args.log_dir, f'predictions{suffix}.txt')} and references.txt")
    return e2e_scores(outputs, references)


def read_scorer_files(pred_path, ref_path):
    with open(pred_path, encoding="utf-8") as f:
        predictions = [line.strip() for line in f]
    references = re.split(r"\n\s*\n", Path(ref_path).read_text(encoding="utf-8").strip())
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{pred_path}: {len(predictions)} outputs; {ref_path}: {len(references)} instances")
    return predictions, [[line.strip() for line in refs.split("\n")] for refs in references]


def nist(predictions, references, max_n=5):
    """Corpus NIST as MT-Eval v13a defines it (Doddington 2002). An n-gram's information is log2(count of
    its first n - 1 words / its count) over all references; the matched (clipped) n-grams' information per
    order, over that order's output n-gram count, summed over orders 1..5, times the brevity penalty
    exp(beta log^2 min(1, output words / mean reference words)), beta making a ratio of 2/3 cost half."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    tokenize = Tokenizer13a()
    ngrams = lambda words, n: Counter(zip(*(words[i:] for i in range(n))))  # noqa: E731
    data = [(tokenize(p).lower().split(), [tokenize(r).lower().split() for r in refs])
            for p, refs in zip(predictions, references)]
    counts = Counter()  # every reference n-gram; () counts all reference words
    for ref in (ref for _, refs in data for ref in refs):
        counts[()] += len(ref)
        for n in range(1, max_n + 1):
            counts.update(ngrams(ref, n))
    ref_words = sum(sum(map(len, refs)) / len(refs) for _, refs in data)
    info, out_ngrams = [0.0] * max_n, [0] * max_n
    for out, refs in data:
        for n in range(1, max_n + 1):
            out_ngrams[n - 1] += max(len(out) - n + 1, 0)
            hits = ngrams(out, n) & functools.reduce(Counter.__or__, (ngrams(ref, n) for ref in refs))
            info[n - 1] += sum(c * math.log2(counts[g[:-1]] / counts[g]) for g, c in hits.items())
    ratio, beta = out_ngrams[0] / ref_words, math.log(0.5) / math.log(1.5) ** 2
    return sum(i / n for i, n in zip(info, out_ngrams) if n) * math.exp(beta * math.log(min(ratio, 1.0)) ** 2)


def coco_words(text):
    """A stand-in for COCO's Java PTB tokenizer: lowercase, split clitics ("do n't"), drop punctuation."""
    text = re.sub(r"(\w)n't\b", r"\1 n't", text.lower())
    return " ".join(w for w in re.findall(r"n't|'\w+|\w+(?:[-./]\w+)*|\S", text) if w not in COCO_PUNCTUATION)


def e2e_scores(predictions, references):
    """The official scorer's {metric: value} (BLEU, METEOR, ROUGE-L as fractions); no Java: METEOR None."""
    import sacrebleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    # sacrebleu takes references as streams (the i-th reference of every instance), None where one has fewer.
    streams = [[refs[i] if i < len(refs) else None for refs in references]
               for i in range(max(map(len, references)))]
    bleu = sacrebleu.corpus_bleu(predictions, streams, lowercase=True, smooth_method="none")
    scores = dict(BLEU=bleu.score / 100, NIST=nist(predictions, references), METEOR=None)
    gts, res = dict(enumerate(references)), {i: [p] for i, p in enumerate(predictions)}
    if shutil.which("java"):
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
        gts, res = (PTBTokenizer().tokenize({i: [{"caption": c} for c in v] for i, v in d.items()})
                    for d in (gts, res))
        scores["METEOR"] = Meteor().compute_score(gts, res)[0]
    else:
        gts, res = ({i: [coco_words(c) for c in v] for i, v in d.items()} for d in (gts, res))
    scores["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    scores["CIDEr"] = Cider().compute_score(gts, res)[0]
    return {m: None if v is None else float(v) for m, v in scores.items()}


def print_metrics(rows):
    """rows: [(name, scores)], on the paper's scale (BLEU, METEOR, ROUGE-L in percent)."""
    print("| | BLEU | NIST | METEOR | ROUGE-L | CIDEr |\n|---|---|---|---|---|---|")
    for name, s in rows:
        meteor = "n/a" if s["METEOR"] is None else f"{100 * s['METEOR']:.1f}"
        print(f"| {name} | {100 * s['BLEU']:.1f} | {s['NIST']:.2f} | {meteor} | {100 * s['ROUGE_L']:.1f} | "
              f"{s['CIDEr']:.2f} |")
    if any(s["METEOR"] is None for _, s in rows):
        print("METEOR left out: no java on PATH (METEOR 1.5 is Java); ROUGE-L, CIDEr on coco_words tokens.")


# --- Adapter files: the A/B tensors, the LoRA config and the identity of the base they belong to --
def base_fingerprint(model):
    """SHA-256 of the base weights (names, dtypes, shapes, bytes), adapters excluded; must be unmerged."""
    if any(m.merged for m in lora_layers(model)):
        raise ValueError("cannot fingerprint a model whose adapters are merged into its weights.")
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if not name.endswith((".lora_A", ".lora_B")):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())  # raw bytes: works for bf16 too
    return h.hexdigest()


def save_adapter(path, model, lora_config, base_path, base_hash, tokenizer, base_is_init=False, **extra):
    blob = {"lora": lora_state_dict(model), "lora_config": dict(lora_config),
            "tokenizer": gpt.tokenizer_spec(tokenizer),  # the whole tokenizer, not a path
            "base": {"path": str(base_path), "init": base_is_init, "sha256": base_hash}, **extra}
    with gpt.atomic_write(path) as f:
        torch.save(blob, f)


def read_adapter(path):
    """An adapter as {"lora": tensors, "lora_config", "base", ...}: a file of ours, or a PEFT directory."""
    if os.path.isdir(path):
        return read_peft(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"adapter file {path} does not exist.")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say so in one line
        raise ValueError(f"{path} is not a readable adapter file ({e.__class__.__name__}).") from None
    if not isinstance(blob, dict) or not {"lora", "lora_config", "base"} <= blob.keys() \
            or not isinstance(blob["lora"], dict) or not isinstance(blob["base"], dict):
        raise ValueError(f"{path} is not a LoRA adapter written by lora.py (no 'lora'/'lora_config'/'base').")
    if not isinstance(blob["base"].get("path"), str) or not isinstance(blob["base"].get("sha256"), str):
        raise ValueError(f"{path}: the adapter's 'base' must name a path and a sha256, got {blob['base']!r}")
    check_lora_config(blob["lora_config"], path)
    return blob


def load_adapter(model, blob, base_hash=None):
    """Wrap `model` (the unadapted base) as the adapter says and load its A/B; refuse a different base."""
    have, want = base_hash or base_fingerprint(model), blob["base"]
    if want["sha256"] and have != want["sha256"]:  # (a directory PEFT wrote names its base, without a hash)
        raise ValueError(f"adapter was trained on base {want['path']} (weights sha256 {want['sha256'][:12]}"
                         f"...), but this base's sha256 is {have[:12]}...: pass the matching --ckpt/--init.")
    cfg = blob["lora_config"]
    apply_lora(model, cfg["r"], cfg["alpha"], cfg["dropout"], cfg["targets"], cfg["rslora"])
    params = {k: v for k, v in model.named_parameters() if k.endswith((".lora_A", ".lora_B"))}
    if set(blob["lora"]) != set(params):
        raise ValueError("adapter tensors do not match the model's LoRA layers (different architecture?).")
    for name, t in blob["lora"].items():
        if params[name].shape != t.shape:
            raise ValueError(f"adapter tensor {name} has shape {tuple(t.shape)}, "
                             f"the model expects {tuple(params[name].shape)}.")
        if not torch.isfinite(t).all():
            raise ValueError(f"adapter tensor {name} holds non-finite values (NaN or inf).")
    model.load_state_dict(blob["lora"], strict=False)
    return model


# --- PEFT's adapter format: adapter_config.json + adapter_model.safetensors -----------------------
PEFT_PREFIX = "base_model.model."
PEFT_OPTIONS = ("use_dora", "bias", "rank_pattern", "alpha_pattern", "layers_to_transform", "layers_pattern",
                "modules_to_save", "lora_bias", "exclude_modules", "target_parameters")  # not in LoRALinear
PEFT_PLAIN = (None, False, "none", {}, [])  # the values of those options that mean "off"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md")
PEFT_NOTE = """Exported by lora.py. PEFT adapts whole modules, so the q/v-only adapter (rank r on the q and v
blocks of GPT-2's fused c_attn) is one rank-2r adapter on c_attn: A = [A_q; A_v], B = [[B_q, 0], [0, 0],
[0, B_v]], lora_alpha scaled to keep our scaling. Other modules get zero rows in A and columns in B.
"""


def save_peft(out_dir, model, lora_config, base_path, base_hash):
    """What PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base), out_dir) loads (PEFT_NOTE)."""
    from safetensors.torch import save
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    r, tensors = lora_config["r"], {}
    rank = max(len(m.enabled) for m in layers.values()) * r
    for name, m in layers.items():
        A, B = torch.zeros(rank, m.in_features), torch.zeros(m.out_features, rank)
        A[:len(m.enabled) * r] = m.lora_A.detach()
        for i, (block, B_i) in enumerate(zip(m.enabled, m.lora_B.detach().split(m.block_size))):
            B[block * m.block_size:(block + 1) * m.block_size, i * r:(i + 1) * r] = B_i
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"], tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = A, B
    alpha, rslora = lora_config["alpha"], lora_config["rslora"]
    config = dict(peft_type="LORA", task_type="CAUSAL_LM", base_model_name_or_path=str(base_path), r=rank,
                  lora_alpha=alpha * (math.sqrt(rank // r) if rslora else rank // r), use_rslora=rslora,
                  lora_dropout=lora_config["dropout"], fan_in_fan_out=True, inference_mode=True,
                  target_modules=sorted({"c_attn" if t == "qv" else t for t in lora_config["targets"]}))
    meta = {"format": "pt", "base_sha256": base_hash}
    for name, data in [("adapter_model.safetensors", save(tensors, metadata=meta)),
                       ("adapter_config.json", json.dumps(config, indent=2).encode()),
                       ("README.md", PEFT_NOTE.encode())]:
        with gpt.atomic_write(os.path.join(out_dir, name)) as f:
            f.write(data)


def read_peft(path):
    """A PEFT LoRA directory (ours or PEFT's own) as an adapter of ours; unsupported options are refused."""
    from safetensors import safe_open
    try:
        config = json.loads(Path(path, "adapter_config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("adapter_config.json holds no JSON object")
        if os.path.exists(os.path.join(path, "adapter_model.safetensors")):
            with safe_open(os.path.join(path, "adapter_model.safetensors"), "pt") as f:
                tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
        else:
            tensors, meta = torch.load(os.path.join(path, "adapter_model.bin"), weights_only=True), {}
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is not a readable PEFT adapter directory ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:120]})") from None
    get = config.get
    shown = ["peft_type", "target_modules"] + [k for k in PEFT_OPTIONS if get(k) not in PEFT_PLAIN]
    if get("peft_type") != "LORA" or not isinstance(get("target_modules"), list) or shown[2:]:
        raise ValueError(f"{path}: lora.py loads PEFT LoRA adapters with a list of target_modules and no "
                         f"other options; this one has {', '.join(f'{k}={get(k)!r}' for k in shown)}")
    lora_config = dict(r=get("r"), alpha=get("lora_alpha"), dropout=get("lora_dropout", 0),
                       targets=get("target_modules"), rslora=get("use_rslora", False))
    check_lora_config(lora_config, os.path.join(path, "adapter_config.json"))
    lora = {k.removeprefix(PEFT_PREFIX).removesuffix(".weight"): v for k, v in tensors.items()}
    base = get("base_model_name_or_path") or "gpt2"
    return dict(lora=lora, lora_config=lora_config,
                base=dict(path=base, init=not os.path.isfile(base), sha256=meta.get("base_sha256")))


# --- Command line: numbers (flags, adapter configs) and paths refused at the door, in one line naming each
def number(kind, ok, want):
    """An argparse type: a `kind` number refused unless ok(it) (NaN fails all comparisons); .ok, .want too."""
    def parse(text):
        if not ok(value := kind(text)):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text}")
        return value
    parse.__name__, parse.ok, parse.want = kind.__name__, ok, want
    return parse


COUNT, COUNT0 = number(int, lambda v: v >= 1, ">= 1"), number(int, lambda v: v >= 0, ">= 0")
RATE = number(float, lambda v: 0 < v < math.inf, "finite, > 0")
FINITE, FRACTION = number(float, math.isfinite, "finite"), number(float, lambda v: 0 <= v < 1, "in [0, 1)")
FRACTION_OPEN = number(float, lambda v: 0 < v < 1, "in (0, 1)")


def check_lora_config(cfg, where):
    """An adapter's LoRA config (ours or PEFT's): every field of its type and in range."""
    fields = dict(r=((int,), COUNT), alpha=((int, float), FINITE), dropout=((int, float), FRACTION),
                  rslora=((bool,), None), targets=((list,), None))
    for key, (kinds, rule) in fields.items():
        value, field = cfg.get(key) if isinstance(cfg, dict) else None, f"{where}: LoRA config field '{key}'"
        if type(value) not in kinds or (key == "targets" and not all(isinstance(t, str) for t in value)):
            raise ValueError(f"{field} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
        if rule and not rule.ok(value):
            raise ValueError(f"{field} must be {rule.want}, got {value}")


def check_paths(args):
    """Outputs never overwrite inputs (the base, the adapter, the data), each other, or (unless --overwrite)
    an existing file, and each can be written: checked before any work, so nothing is lost at the end."""
    inputs = {"--ckpt": args.ckpt, "--data": args.data if args.data != "e2e" else None,
              "--adapter": args.adapter, "--tokenizer": args.tokenizer,
              "--eval-data": args.eval_data if args.eval_data != "e2e" else None}
    outputs = {"--out": None if args.adapter or args.eval_only else args.out, "--merge": args.merge,
               "--full-out": args.full_out if args.full else None}
    if args.eval_data:   # the E2E table's files
        outputs.update({f"--log-dir ({name})": os.path.join(args.log_dir, name)
                        for name in ("predictions.txt", "predictions_full.txt", "references.txt")})
    for flag, folder, names in ("--adapter", args.adapter, inputs), ("--save-peft", args.save_peft, outputs):
        if folder and (names is outputs or os.path.isdir(folder)):  # a PEFT directory: its files
            names.update({f"{flag} ({name})": os.path.join(folder, name) for name in PEFT_FILES})
    seen = {os.path.realpath(path): flag for flag, path in reversed(inputs.items()) if path}  # the first wins
    for flag, path in ((flag, path) for flag, path in outputs.items() if path):
        if (clash := seen.setdefault(os.path.realpath(path), flag)) != flag:  # an earlier flag names it
            raise ValueError(f"{flag} {path} is also {clash}: outputs never overwrite inputs or each other")
        if os.path.isfile(path) and not flag.startswith("--log-dir") and not args.overwrite:
            raise ValueError(f"{flag} {path} already exists (another run's?): add --overwrite to replace it")
        try:
            gpt.check_output(path)  # writable: tried with a temporary file where it will go
        except ValueError as e:
            raise ValueError(f"{flag}: {e}") from None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    base = p.add_mutually_exclusive_group()
    base.add_argument("--ckpt", help="base checkpoint from train_gpt2.py (default: log/model.pt)")
    base.add_argument("--init", help="start from HuggingFace weights instead: gpt2, gpt2-medium, ...")
    p.add_argument("--data", default="e2e", help="'e2e' (download), a .jsonl of {\"prompt\", \"completion\"} "
                   "objects, prompt||completion lines, or plain text")
    p.add_argument("--cache-dir", default="e2e", help="where --data e2e keeps its downloaded files")
    p.add_argument("--val-frac", type=FRACTION_OPEN, default=0.1, help="val share of a local --data file")
    p.add_argument("--tokenizer", help="gpt2, byte or a bpe.py .model (default: the one the base records)")
    p.add_argument("--r", type=COUNT, default=4, help="LoRA rank")
    p.add_argument("--alpha", type=FINITE, default=32.0, help="scaling = alpha / r")
    p.add_argument("--dropout", type=FRACTION, default=0.1, help="dropout on the LoRA input path")
    p.add_argument("--rslora", action="store_true", help="scaling = alpha / sqrt(r) (rank-stabilized LoRA)")
    p.add_argument("--targets", default="qv", help=f"comma-separated, of: {', '.join(TARGETS)}")
    numbers = [("--steps", COUNT, 1000), ("--batch-size", COUNT, 8), ("--grad-accum", COUNT, 1),
               ("--block-size", number(int, lambda v: v >= 2, ">= 2"), 512), ("--lr", RATE, 2e-4),
               ("--warmup", COUNT0, 100), ("--grad-clip", RATE, 1.0), ("--seed", int, 1337),
               ("--weight-decay", number(float, lambda v: 0 <= v < math.inf, "finite, >= 0"), 0.01)]
    for flag, kind, default in numbers:
        p.add_argument(flag, type=kind, default=default)
    p.add_argument("--full-lr", type=RATE, help="learning rate of --full (default: --lr)")
    p.add_argument("--eval-examples", type=COUNT, default=512, help="validation examples for the val loss")
    p.add_argument("--samples", type=COUNT0, default=3, help="validation prompts to complete before/after")
    p.add_argument("--out", default="log/lora.pt", help="adapter-only output file")
    p.add_argument("--merge", nargs="?", const="log/lora_merged.pt", help="also write the merged checkpoint")
    p.add_argument("--adapter", help="evaluate this adapter (a file of ours or a PEFT directory) on its base")
    p.add_argument("--save-peft", metavar="DIR", help="also write the adapter in PEFT's format into DIR")
    p.add_argument("--full", action="store_true", help="also run full fine-tuning and print LoRA vs full")
    p.add_argument("--full-out", default="log/full.pt", help="where --full writes its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    g = p.add_argument_group("generation metrics (the LoRA paper's E2E table, decoded as in the paper)")
    g.add_argument("--eval-data", help="E2E-format file to score, 'e2e' (its test split: the default "
                   "with --data e2e or --eval-only) or 'none'")
    g.add_argument("--eval-only", action="store_true", help="no training: score --ckpt/--init (+ --adapter)")
    g.add_argument("--eval-limit", type=COUNT, help="decode the first N meaning representations")
    g.add_argument("--beams", type=COUNT, default=10)
    g.add_argument("--length-penalty", type=FINITE, default=0.8)
    g.add_argument("--no-repeat-ngram", type=COUNT0, default=4, help="n-gram size never repeated (0: off)")
    g.add_argument("--max-new-tokens", type=COUNT, default=64)
    g.add_argument("--greedy", action="store_true", help="greedy decoding instead of beam search")
    g.add_argument("--log-dir", default="log", help="where predictions.txt and references.txt go")
    g.add_argument("--score", nargs=2, metavar=("PREDICTIONS", "REFERENCES"), help="only score two files")
    g.add_argument("--json", action="store_true", help="with --score: also one JSON object on the last line")
    args = p.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    try:
        args.device = gpt.check_device(args.device)
    except ValueError as e:
        p.error(f"--device: {e}")
    for bad, why in [(not args.targets, "--targets names no module"),
                     (args.adapter and args.full, "--full trains; --adapter only evaluates: use one of them"),
                     (args.eval_only and args.full, "--eval-only trains nothing (to score a full fine-tune: "
                                                    "--eval-only --ckpt ITS_CHECKPOINT)"),
                     (args.eval_only and args.save_peft and not args.adapter,
                      "--save-peft writes an adapter: --eval-only has one only with --adapter")]:
        if bad:
            p.error(why)
    eval_data = args.eval_data or ("e2e" if args.data == "e2e" or args.eval_only else "none")
    args.eval_data = None if eval_data == "none" else eval_data
    return args


def load_base(args, recorded_tokenizer=None):
    """(model, tokenizer, base hash) from --ckpt/--init; tokenizer: --tokenizer, the adapter's, the base's."""
    model, ckpt = (gpt.GPT.from_pretrained(args.init), {}) if args.init else gpt.load_checkpoint(args.ckpt)
    tokenizer = gpt.get_tokenizer(args.tokenizer or recorded_tokenizer or ckpt.get("tokenizer", "gpt2"))
    if tokenizer.n_vocab > model.config.vocab_size:
        raise ValueError(f"tokenizer {args.tokenizer or tokenizer.name} has {tokenizer.n_vocab} ids, more "
                         f"than the base model's vocabulary ({model.config.vocab_size})")
    return model.to(args.device), tokenizer, base_fingerprint(model)


def main(argv=None):
    args = parse_args(argv)
    if args.score:  # two files alone
        scores = e2e_scores(*read_scorer_files(*args.score))
        print_metrics([(os.path.basename(args.score[0]), scores)])
        return print(json.dumps(scores)) if args.json else None
    torch.manual_seed(args.seed)
    adapter = read_adapter(args.adapter) if args.adapter else None
    if not args.ckpt and not args.init:  # the adapter's recorded base, else log/model.pt
        recorded = adapter["base"] if adapter else {"path": "log/model.pt"}
        args.init, args.ckpt = (recorded["path"], None) if recorded.get("init") else (None, recorded["path"])
    check_paths(args)
    device, base_path = args.device, args.init or args.ckpt
    model, tokenizer, base_hash = load_base(args, (adapter or {}).get("tokenizer"))
    groups = eval_groups(args.eval_data, args.eval_limit, args.cache_dir) if args.eval_data else []
    train_ex, val_ex = load_data(args, tokenizer, min(args.block_size, model.config.block_size))
    val_loss = functools.partial(evaluate, examples=val_ex[:args.eval_examples], batch_size=args.batch_size,
                                 device=device, pad_id=tokenizer.eot_token)
    samples = functools.partial(print_samples, val=val_ex, n=args.samples, tokenizer=tokenizer, device=device)
    print(f"base val loss {(base_loss := val_loss(model)):.4f}")
    samples(model, title="base")
    if adapter:  # evaluate a saved adapter
        config = adapter["lora_config"]
        count_params(load_adapter(model, adapter, base_hash), "adapter")
        print(f"val loss with adapter {val_loss(model):.4f}")
        samples(model, title="adapter")
    elif not args.eval_only:  # train one
        config = {k: getattr(args, k) for k in ("r", "alpha", "dropout", "targets", "rslora")}
        count_params(model, f"LoRA on {len(apply_lora(model, **config))} layers")
        stats = train(model, train_ex, val_ex, args, device, tokenizer.eot_token)
        print(f"val loss: base {base_loss:.4f} -> LoRA {stats['val_loss']:.4f}")
        samples(model, title="LoRA")
        save_adapter(args.out, model, config, base_path, base_hash, tokenizer, bool(args.init),
                     val_loss=stats["val_loss"], steps=args.steps)
        print(f"wrote adapter {args.out}")
    name = "adapter" if adapter else "base" if args.eval_only else "LoRA"
    metrics = [(name, eval_generation(model, groups, tokenizer, args))] if groups else []
    if args.save_peft:
        save_peft(args.save_peft, model, config, base_path, base_hash)
        print(f"wrote PEFT adapter {args.save_peft}")
    if args.merge:
        gpt.save_checkpoint(args.merge, merge_and_unwrap(model), tokenizer, lora_base=base_path)
        print(f"wrote merged checkpoint {args.merge}")
    if args.full:
        del model  # so that its memory does not count in the full run's peak
        model = full_fine_tune(args, stats, base_loss, train_ex, val_ex, tokenizer)
        if groups:
            metrics.append(("full fine-tuning", eval_generation(model, groups, tokenizer, args, "_full")))
    if metrics:
        print_metrics(metrics)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("error: interrupted (every file is written atomically: none is left half-written)")
