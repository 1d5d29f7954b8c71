"""HellaSwag evaluation for GPT-2 style models, in both published conventions, batched and DDP-aware.

Each example is a context and 4 endings; the model picks the ending it finds most likely. Two conventions
are in use and give different numbers for the same model:

  --style nanogpt   the well-known GPT-2 reproduction: context = `ctx`, each ending " " + ending; acc picks
                    the smallest summed ending loss, acc_norm the smallest mean per-token loss.
  --style harness   lm-evaluation-harness: the query is a cleaned-up "activity_label: ctx_a Ctx_b"; acc
                    picks the largest summed log-likelihood, acc_norm the largest per character of ending.

Run it:
    python hellaswag.py -m gpt2                       # OpenAI's weights (any of the four sizes)
    python hellaswag.py --ckpt log/model.pt           # a checkpoint written by train_gpt2.py
    python hellaswag.py -m gpt2 --hf                  # score with transformers' GPT2LMHeadModel instead
    python hellaswag.py -m gpt2 --style harness --limit 500 --out preds.jsonl

Each example becomes ONE packed row (the context once, then its 4 endings, each attending only to the
context and itself), scored through model.hidden_states; the result equals scoring each pair on its own.
"""
import argparse
import json
import os
import re
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from model import (GPT, atomic_write, check_device, check_output, download, get_tokenizer, load_checkpoint,
                   load_hf_gpt2, unwrap)

# The dataset's own public repository (the HuggingFace copy is the same data).
DATA_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
SPLITS = ("train", "val", "test")
STYLES = ("nanogpt", "harness")
DEFAULT_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hellaswag")  # or $HELLASWAG_DIR


# --- 1. Data: download once into a cache directory, then read and validate the jsonl file.
def parse_example(line, where):
    """One jsonl line -> an example dict, checked for the fields scoring needs."""
    try:
        example = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(example, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(example).__name__}")
    if missing := [k for k in ("ctx", "ctx_a", "ctx_b", "activity_label", "endings") if k not in example]:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    endings = example["endings"]
    if not (isinstance(endings, list) and len(endings) == 4 and all(isinstance(e, str) for e in endings)):
        raise ValueError(f"{where}: 'endings' must be a list of 4 strings")
    if not all(isinstance(example[k], str) for k in ("ctx", "ctx_a", "ctx_b", "activity_label")):
        raise ValueError(f"{where}: ctx, ctx_a, ctx_b and activity_label must be strings")
    label = example.get("label")  # the test split hides its labels
    if isinstance(label, str) and label.isdigit():
        label = int(label)
    if label is not None and (type(label) is not int or not 0 <= label < 4):
        raise ValueError(f"{where}: 'label' must be 0, 1, 2 or 3, got {example['label']!r}")
    example["label"] = label
    return example


def load_examples(split="val", data_dir=None, file=None, limit=None):
    """HellaSwag examples from `file`, or from data_dir/hellaswag_{split}.jsonl (downloaded once);
    a one-line ValueError when offline or when a line is malformed."""
    if file is None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        data_dir = data_dir or os.environ.get("HELLASWAG_DIR") or DEFAULT_DATA_DIR
        file = os.path.join(data_dir, f"hellaswag_{split}.jsonl")
        if not os.path.exists(file):
            download(DATA_URL.format(split=split), file, f"pass a local {os.path.basename(file)} with --file")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"HellaSwag file {file} does not exist")
    examples = []
    with open(file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if limit is not None and len(examples) >= limit:
                break
            if line.strip():
                examples.append(parse_example(line, f"{file} line {lineno}"))
    if not examples:
        raise ValueError(f"{file} holds no examples")
    return examples


# --- 2. Rendering: an example -> context tokens, 4 ending-token lists (and the ending's character count).
def harness_preprocess(text):
    """lm-evaluation-harness's clean-up of HellaSwag text (the brackets are WikiHow scraping artefacts)."""
    text = re.sub(r"\[.*?\]", "", text.strip().replace(" [title]", ". "))
    return text.replace("  ", " ")  # one pass, as the harness does: three spaces become two


def render_parts(example, enc, style="nanogpt"):
    """-> (context tokens, [4 ending-token lists], [4 ending lengths in characters]).

    The ending tokens are exactly those each convention scores. The character lengths are the
    harness's normaliser: len() of the cleaned ending without the space that joins it to the context."""
    if style == "nanogpt":
        context = enc.encode_ordinary(example["ctx"])
        endings = [enc.encode_ordinary(" " + e) for e in example["endings"]]
        return context, endings, [len(e) for e in example["endings"]]
    if style != "harness":
        raise ValueError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    query = harness_preprocess(example["activity_label"] + ": " + example["ctx_a"] + " "
                               + example["ctx_b"].capitalize())
    choices = [harness_preprocess(e) for e in example["endings"]]
    # Like the harness, tokenize context + continuation as one string and cut it where the context's own
    # tokens end; trailing spaces of the context belong to the continuation.
    context = enc.encode_ordinary(query.rstrip())
    endings = [enc.encode_ordinary(query + " " + c)[len(context):] for c in choices]
    return context, endings, [len(c) for c in choices]


def render_example(example, enc, style="nanogpt"):
    """-> tokens (4, T), mask (4, T) (1 on ending tokens), label: the well-known reproduction's layout."""
    context, endings, _ = render_parts(example, enc, style)
    tokens = pad_sequence([torch.tensor(context + e) for e in endings], batch_first=True)
    mask = pad_sequence([torch.tensor([0] * len(context) + [1] * len(e)) for e in endings], batch_first=True)
    return tokens, mask, example["label"]


# --- 3. Scoring: per-ending summed completion loss (= minus the log-likelihood) and token counts.
def is_hf_model(model):
    return type(unwrap(model)).__module__.startswith("transformers")


def ending_losses_loop(model, example, enc, device, style="nanogpt"):
    """The well-known recipe's loop, one example per forward, full logits -> (4,) summed ending losses:
    the reference the batched scorer must agree with, and `python bench.py hellaswag`'s baseline."""
    tokens, mask = (t.to(device) for t in render_example(example, enc, style)[:2])
    logits = model(tokens).logits if is_hf_model(model) else model(tokens)[0]
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none")
    return (losses.view(4, -1) * mask[:, 1:]).sum(dim=1)


def rows_batch(parts):
    """Each (context, ending) pair as its own row, right-padded: idx (4B, T), targets (4B, T) holding the
    next token where it is an ending token and -1 elsewhere."""
    rows = [(context, ending) for context, endings, _ in parts for ending in endings]
    idx = [torch.tensor((context + ending)[:-1]) for context, ending in rows]
    targets = [torch.tensor([-1] * (len(context) - 1) + ending) for context, ending in rows]
    return pad_sequence(idx, batch_first=True), pad_sequence(targets, batch_first=True, padding_value=-1)


def rows_losses(model, idx, targets):
    """Summed ending loss per row, using the model's own forward (ours or HuggingFace's)."""
    if not is_hf_model(model):
        return model(idx, targets, reduction="none")[1].sum(dim=1)  # lm_head on the ending positions only
    hidden = model.transformer(input_ids=idx).last_hidden_state  # HF's lm_head, on the scored positions only
    scored = targets != -1
    losses = torch.zeros(targets.shape, dtype=torch.float32, device=idx.device)
    losses[scored] = F.cross_entropy(model.lm_head(hidden[scored]).float(), targets[scored], reduction="none")
    return losses.sum(dim=1)


def pack_batch(parts, pad_to=1):
    """Lay out each example as ONE row: [context, ending 0, ending 1, ending 2, ending 3], right-padded
    to a multiple of pad_to. The context is computed once instead of four times, and an ending's last
    token is left out of the row: it is only ever a target, nothing reads its output.

    Returns idx (B, L); pos (B, L), the positions each token would have with its ending right after the
    context; seg (B, L): 0 context, 1..4 ending, -1 padding; and for every ending token (N in all): the
    position whose output predicts it, its id, and which ending (4 * example + i, in row example) it is in."""
    L = -(-max(len(c) + sum(len(e) - 1 for e in ends) for c, ends, _ in parts) // pad_to) * pad_to
    idx, pos = torch.zeros((len(parts), L), dtype=torch.long), torch.zeros((len(parts), L), dtype=torch.long)
    seg = torch.full((len(parts), L), -1, dtype=torch.long)
    sources, targets, owner = [], [], []
    for b, (context, endings, _) in enumerate(parts):
        n = len(context)
        idx[b, :n], pos[b, :n], seg[b, :n] = torch.tensor(context), torch.arange(n), 0
        start = n
        for i, ending in enumerate(endings):
            m = len(ending) - 1  # tokens fed in
            fed = slice(start, start + m)
            idx[b, fed], pos[b, fed], seg[b, fed] = torch.tensor(ending[:-1]), torch.arange(n, n + m), i + 1
            # the last context token predicts every ending's first token; then each token its successor
            sources += [n - 1] + list(range(start, start + m))
            targets += ending
            owner += [4 * b + i] * (m + 1)
            start += m
    return idx, pos, seg, *(torch.tensor(x, dtype=torch.long) for x in (sources, targets, owner))


def packed_hidden(model, idx, pos, seg):
    """The model's own forward over packed rows, with an attention mask that lets a token see the context
    and the earlier tokens of its own ending only (never another ending)."""
    causal = torch.ones(idx.size(1), idx.size(1), dtype=torch.bool, device=idx.device).tril()
    visible = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])  # (B, query, key)
    return model.hidden_states(idx, pos=pos, attn_mask=(causal & visible)[:, None])  # same for every head


_compiled_hidden = None
COMPILE_PAD = 128  # HellaSwag's packed rows (< 1024 tokens) then come in at most 8 lengths
CHUNK = 4096  # ending tokens per lm_head call: the (N, vocab) logits of a batch never all exist at once


def score_examples(model, examples, enc, device, batch_size=16, style="nanogpt", autocast_dtype=None,
                   method="auto", compile=False, progress=False):
    """One dict per example (score_record), in input order. method "packed" (default for our GPT): each
    example in one row, its context once; "rows" (default for a HuggingFace model): each context + ending
    its own row, through the model's own forward. batch_size examples per forward pass, longest first."""
    global _compiled_hidden
    from tqdm import tqdm
    raw = unwrap(model)
    if method == "auto":
        method = "rows" if is_hf_model(raw) else "packed"
    if method not in ("packed", "rows"):
        raise ValueError(f"unknown method {method!r}; choose packed or rows")
    parts = [render_parts(ex, enc, style) for ex in examples]
    window = getattr(raw.config, "block_size", None) or raw.config.n_positions  # ours / HuggingFace's name
    for ex, (context, endings, _) in zip(examples, parts):
        if not context or not all(endings):
            raise ValueError(f"example ind={ex.get('ind')} has an empty context or ending after tokenizing")
        if len(context) + max(map(len, endings)) > window:
            raise ValueError(f"example ind={ex.get('ind')} is longer than the model's context ({window})")
    if compile and _compiled_hidden is None:  # fixed shapes reuse its graphs: batch full, lengths COMPILE_PAD
        _compiled_hidden = torch.compile(packed_hidden, dynamic=False)
    hidden_fn = _compiled_hidden if compile else packed_hidden
    length = lambda j: len(parts[j][0]) + sum(map(len, parts[j][1]))  # noqa: E731 (either method's order)
    order = sorted(range(len(parts)), key=length, reverse=True)  # a too-big batch fails at the start
    sums = torch.zeros(len(parts), 4, dtype=torch.float64)
    autocast = torch.autocast(torch.device(device).type, dtype=autocast_dtype, enabled=bool(autocast_dtype))
    was_training = raw.training
    raw.eval()  # no dropout while scoring, even when called from the middle of a training loop
    try:
        with torch.inference_mode(), autocast:
            for start in tqdm(range(0, len(order), batch_size), desc="hellaswag", disable=not progress):
                batch = order[start:start + batch_size]
                sums[batch] = batch_losses(model, [parts[j] for j in batch], device, method, hidden_fn,
                                           batch_size if compile else None)
    finally:
        raw.train(was_training)
    return [score_record(ex, s.tolist(), part, style) for ex, s, part in zip(examples, sums, parts)]


def batch_losses(model, parts, device, method, hidden_fn=packed_hidden, fixed_batch=None):
    """(len(parts), 4) summed ending losses of one batch. fixed_batch (torch.compile) pads the batch with
    its last example and the length to COMPILE_PAD, so few shapes occur (compile gives up after 8)."""
    if method == "rows":
        idx, targets = rows_batch(parts)
        return rows_losses(model, idx.to(device), targets.to(device)).double().cpu().view(-1, 4)
    n = len(parts)
    if fixed_batch:
        parts = parts + [parts[-1]] * (fixed_batch - n)
    idx, pos, seg, sources, targets, owner = pack_batch(parts, pad_to=COMPILE_PAD if fixed_batch else 1)
    idx, pos, seg, sources, targets = (t.to(device) for t in (idx, pos, seg, sources, targets))
    raw = unwrap(model)
    x = hidden_fn(raw, idx, pos, seg)[owner.to(device) // 4, sources]  # row b holds endings 4b .. 4b + 3
    losses = torch.cat([F.cross_entropy(raw.lm_head(x[i:i + CHUNK]).float(), targets[i:i + CHUNK],
                                        reduction="none") for i in range(0, len(targets), CHUNK)])
    per_ending = torch.zeros(4 * len(parts), dtype=torch.float64).index_add_(0, owner, losses.double().cpu())
    return per_ending.view(-1, 4)[:n]


def score_record(example, losses_sum, part, style):
    """Both conventions' numbers for one example, and the chosen style's predictions (ties: first ending)."""
    _, endings, chars = part
    losses_mean = [s / len(e) for s, e in zip(losses_sum, endings)]
    loglik_per_char = [-s / max(c, 1) for s, c in zip(losses_sum, chars)]
    pred_norm = min(range(4), key=losses_mean.__getitem__) if style == "nanogpt" else \
        max(range(4), key=loglik_per_char.__getitem__)
    return dict(ind=example.get("ind"), label=example["label"], losses_sum=losses_sum,
                losses_mean=losses_mean, loglik_per_char=loglik_per_char,
                pred=min(range(4), key=losses_sum.__getitem__), pred_norm=pred_norm)


# --- 4. Accuracy, summed over DDP ranks: every rank scores its shard, the counts are all-reduced.
def evaluate(model, examples, enc, device, batch_size=16, style="nanogpt", autocast_dtype=None,
             method="auto", compile=False, progress=False):
    """-> dict(acc, acc_norm, n, correct, correct_norm, style). Every torch.distributed rank must call it."""
    import torch.distributed as dist
    if any(ex["label"] is None for ex in examples):
        raise ValueError("some examples have no label (the test split hides them): cannot compute accuracy")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    records = score_examples(model, examples[rank::world], enc, device, batch_size, style, autocast_dtype,
                             method, compile, progress=progress and rank == 0)
    counts = torch.tensor(count_correct(records), dtype=torch.long, device=device)
    if world > 1:
        dist.all_reduce(counts)
    return summarize(*counts.tolist(), style=style)


def count_correct(records):  # -> [n, correct, correct_norm] for records that carry a label
    return [len(records), sum(r["pred"] == r["label"] for r in records),
            sum(r["pred_norm"] == r["label"] for r in records)]


def summarize(n, correct, correct_norm, style):
    return dict(acc=correct / max(n, 1), acc_norm=correct_norm / max(n, 1), n=n, correct=correct,
                correct_norm=correct_norm, style=style)


# --- 5. Command line
def load_model(args, device):
    """-> (model, its tokenizer, its name for the summary line) from -m / --ckpt, as our GPT or (--hf)
    transformers'. A checkpoint brings its own tokenizer; any other than GPT-2's is noted in the name."""
    if not args.ckpt:  # --hf: GPT2LMHeadModel itself, checked and with one-line errors as in from_pretrained
        model = load_hf_gpt2(args.model) if args.hf else GPT.from_pretrained(args.model)
        return model.to(device).eval(), get_tokenizer("gpt2"), args.model + " (transformers)" * args.hf
    model, checkpoint = load_checkpoint(args.ckpt, device)
    enc, name = get_tokenizer(checkpoint.get("tokenizer", "gpt2")), args.ckpt
    if enc.name != "gpt2":
        name += f" ({enc.name} tokenizer: not comparable to the published scores, which use GPT-2's)"
    if args.hf:  # export through save_hf, then score with GPT2LMHeadModel: an independent forward pass
        with tempfile.TemporaryDirectory() as tmp:
            model = load_hf_gpt2(model.save_hf(f"{tmp}/hf"))
        name += " (transformers)"
    return model.to(device).eval(), enc, name


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("-m", "--model", default="gpt2",
                        help="gpt2, gpt2-medium, gpt2-large, gpt2-xl or a save_pretrained directory")
    source.add_argument("--ckpt", help="checkpoint written by train_gpt2.py, e.g. log/model.pt")
    parser.add_argument("--hf", action="store_true", help="score with transformers' GPT2LMHeadModel")
    parser.add_argument("--style", choices=STYLES, default="nanogpt", help="scoring convention (see above)")
    parser.add_argument("--split", choices=SPLITS, default="val")
    parser.add_argument("--file", help="a local hellaswag_*.jsonl instead of the download")
    parser.add_argument("--data-dir", help=f"download cache (default $HELLASWAG_DIR or {DEFAULT_DATA_DIR})")
    parser.add_argument("--limit", type=int, help="score only the first N examples")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16 runs the forward under autocast (faster on GPUs, not bit-exact)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward (lengths padded)")
    parser.add_argument("--out", help="write one JSON line per example here (preds.jsonl)")
    args = parser.parse_args(argv)
    for flag, value in (("--limit", args.limit), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            sys.exit(f"error: {flag} must be at least 1, not {value}")
    try:
        device = check_device(args.device)
        if args.out:  # checked now: a finished scoring is never lost to an unwritable --out
            check_output(args.out, [args.file, args.ckpt])
        examples = load_examples(args.split, args.data_dir, args.file, args.limit)
        model, enc, name = load_model(args, device)
        t0 = time.perf_counter()
        records = score_examples(model, examples, enc, device, args.batch_size, args.style,
                                 torch.bfloat16 if args.dtype == "bfloat16" else None,
                                 compile=args.compile, progress=True)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    seconds, head = time.perf_counter() - t0, f"hellaswag {args.file or args.split} | {name}"
    if args.out:  # one JSON line per example: score_record's dict
        with atomic_write(args.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    if any(r["label"] is None for r in records):
        print(f"{head} | {len(records)} examples scored in {seconds:.1f} s; no labels in this file, so no "
              "accuracy" + (f"; predictions in {args.out}" if args.out else ""))
        return
    s = summarize(*count_correct(records), style=args.style)
    print(f"{head} | style {args.style} | acc {s['acc']:.4f} ({s['correct']}/{s['n']}) | "
          f"acc_norm {s['acc_norm']:.4f} ({s['correct_norm']}/{s['n']}) | {seconds:.1f} s")


if __name__ == "__main__":
    main()
