"""python bench.py hellaswag: HellaSwag examples per second, batched and packed vs the recipe's loop.

CPU mode (default): GPT-2 124M config with random weights, 200 synthetic examples in HellaSwag's schema
with realistic lengths; the same model scores them with the well-known recipe's loop (one example, 4 rows,
per forward, full logits) and with hellaswag.py's batched scorers; the predictions must agree.
GPU mode (--device cuda): the wall time of a whole split (default: val, 10042 examples) for a checkpoint,
a pretrained size (-m gpt2) or random 124M weights (-m random).
"""
import random
import time

import torch

from bench import markdown_table

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


def bench_cpu(args):
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
    rows = []
    for (label, _), sec, got in zip(scorers, seconds, losses):
        got = torch.cat(got)
        same_pred = sum(int(a.argmin() == b.argmin()) for a, b in zip(got, reference))
        rows.append([label, f"{len(examples) / sec:.2f}", f"{sec:.1f}", f"{(got - reference).abs().max().item():.1e}",
                     f"{same_pred}/{len(examples)}", f"{seconds[0] / sec:.2f}x"])
    print(markdown_table(["scorer", "examples/s", "seconds", "max abs loss diff", "same pred", "speed-up"], rows))


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench_gpu(args):
    import hellaswag
    from model import GPT, GPTConfig, get_tokenizer, load_checkpoint
    enc = get_tokenizer("gpt2")
    examples = hellaswag.load_examples(args.split, file=args.file, limit=args.limit)
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


def run(args):
    (bench_cpu if args.device == "cpu" else bench_gpu)(args)


def add_parser(sub):
    p = sub.add_parser("hellaswag", help="HellaSwag scoring: batched+packed vs the one-example loop",
                       description=__doc__)
    p.add_argument("--device", default="cpu", help="cpu: speed-up table; cuda: full-split wall time")
    p.add_argument("--examples", type=int, default=200, help="(cpu) synthetic examples to score")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16], help="(cpu) examples per forward")
    p.add_argument("--methods", nargs="+", choices=("rows", "packed"), default=["rows", "packed"],
                   help="(cpu) batched scorers to time against the loop")
    p.add_argument("--threads", type=int, default=2, help="(cpu) torch threads")
    p.add_argument("--chunk", type=int, default=50, help="(cpu) examples per turn of each scorer")
    p.add_argument("-m", "--models", nargs="+", default=["gpt2"],
                   help="(cuda) gpt2 sizes, 'random' (124M config) or checkpoint .pt files")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="(cuda) float32 and/or bfloat16")
    p.add_argument("--split", default="val", help="(cuda) split to time")
    p.add_argument("--file", help="(cuda) local hellaswag jsonl instead of the download")
    p.add_argument("--limit", type=int, help="(cuda) first N examples only")
    p.add_argument("--batch-size", type=int, default=64, help="(cuda) examples per forward")
    p.set_defaults(run=run)
