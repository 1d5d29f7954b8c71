"""bench.py lora: our LoRA (lora.py on model.GPT) vs HuggingFace PEFT on GPT2LMHeadModel, one training step.

Both sides start from the same random GPT-2 weights (one save_pretrained directory), adapt the same modules
with the same r and alpha, and train on the same batch with AdamW. Each side runs in its own fresh process,
so its peak memory is its own: on CPU the resident-set high-water mark (reset just before the first step,
so model loading is not counted; weights are), on CUDA the peak allocated bytes. A third process does full
fine-tuning of our model, for the optimizer-state comparison.

    python bench.py lora                         # GPT-2 124M config on CPU, batch 2 x 128 tokens
    python bench.py lora --size tiny --batch 8   # a quick check
"""
import multiprocessing
import tempfile


def _lora_make_batch(vocab_size, batch, seq, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq + 1), generator=g)


def _lora_child(side, hf_dir, opts, queue):
    """Runs in a fresh process: build one side, time its training steps, report its numbers."""
    import torch
    import bench
    import lora
    from model import GPT
    torch.set_num_threads(opts["threads"])
    torch.manual_seed(0)
    device = opts["device"]
    targets = opts["targets"]
    if side == "peft":
        from peft import LoraConfig, get_peft_model
        from transformers import GPT2LMHeadModel
        model = GPT2LMHeadModel.from_pretrained(hf_dir, dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(r=opts["r"], lora_alpha=opts["alpha"], lora_dropout=opts["dropout"],
                                                 target_modules=targets, fan_in_fan_out=True))
        vocab = model.config.vocab_size
    else:
        model = GPT.from_pretrained(hf_dir)
        if side == "ours":
            lora.apply_lora(model, r=opts["r"], alpha=opts["alpha"], dropout=opts["dropout"], targets=targets)
        vocab = model.config.vocab_size
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    idx = _lora_make_batch(vocab, opts["batch"], opts["seq"]).to(device)
    x, y = idx[:, :-1], idx[:, 1:]

    losses = []

    def step():
        with lora.autocast(device):
            if side == "peft":  # the same cross-entropy as model.GPT's, on the same T positions
                logits = model(input_ids=x, use_cache=False).logits
                loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
            else:
                loss = model(x, y)[1]
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    lora.reset_peak_memory(device)
    step_time = bench.best_time(step, repeat=opts["repeat"], warmup=1)
    queue.put(dict(side=side, step_time=step_time, peak=lora.peak_memory(device), first_loss=losses[0],
                   trainable=sum(p.numel() for p in params), optimizer_bytes=lora.optimizer_state_bytes(optimizer)))


def _lora_measure(side, hf_dir, opts):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_lora_child, args=(side, hf_dir, opts, queue))
    proc.start()
    result = queue.get()  # (before join: a full queue would block the child's exit)
    proc.join()
    return result


def run_lora_bench(args):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    import bench
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
        rows = {}
        for _ in range(args.rounds):  # alternate the sides, keep each one's best: fairer on a busy machine
            for side in ("ours", "peft", "full"):
                result = _lora_measure(side, tmp, opts)
                if side not in rows or result["step_time"] < rows[side]["step_time"]:
                    rows[side] = result
    ours, peft, full = rows["ours"], rows["peft"], rows["full"]
    # B = 0 at the first step, so all three compute the base model's loss: proof they run the same function.
    first = [r["first_loss"] for r in (ours, peft, full)]
    tolerance = 1e-2 if device.startswith("cuda") else 1e-4  # bf16 autocast vs fp32
    if max(first) - min(first) > tolerance * max(first):
        raise SystemExit(f"error: the sides disagree on the first-step loss {first}: not the same model")
    print(f"GPT-2 {args.size} config ({sizes[args.size]}), random weights; LoRA r={args.r} alpha={args.alpha} "
          f"dropout={args.dropout} on {args.targets}; batch {args.batch} x {args.seq} tokens; AdamW; "
          f"{device}, {opts['threads']} threads, fp32{' + bf16 autocast' if device.startswith('cuda') else ''}; "
          f"best of {args.repeat} steps x {args.rounds} round(s); first-step loss (all sides) {ours['first_loss']:.4f}")
    mem_name = "peak CUDA alloc" if device.startswith("cuda") else "peak RSS"
    table = []
    for name, r in (("ours: lora.py on model.GPT", ours), ("PEFT on GPT2LMHeadModel", peft),
                    ("ours: full fine-tuning", full)):
        table.append([name, f"{r['trainable']:,}", f"{1000 * r['step_time']:.1f}",
                      f"{r['step_time'] / peft['step_time']:.2f}x", lora.fmt_bytes(r["peak"]),
                      f"{r['peak'] / peft['peak']:.2f}x" if r["peak"] and peft["peak"] else "n/a",
                      lora.fmt_bytes(r["optimizer_bytes"]),
                      f"{100 * r['optimizer_bytes'] / full['optimizer_bytes']:.2f}%"])
    print(bench.markdown_table(["", "trainable params", "step ms", "step / PEFT", mem_name, "mem / PEFT",
                                "optimizer state", "opt. state / full FT"], table))


def add_parser(sub):
    p = sub.add_parser("lora", help="our LoRA vs PEFT: step time, peak memory; optimizer state vs full fine-tuning")
    p.add_argument("--size", default="gpt2", choices=["tiny", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--targets", default="c_attn,attn.c_proj,c_fc,mlp.c_proj")
    p.add_argument("--repeat", type=int, default=3, help="timed steps per side (best one reported)")
    p.add_argument("--rounds", type=int, default=1, help="run the three processes this many times, alternating")
    p.add_argument("--threads", type=int, default=None, help="torch threads per side (default: torch's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.set_defaults(run=run_lora_bench)
