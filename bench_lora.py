"""bench.py lora: our LoRA (lora.py on model.GPT) vs HuggingFace PEFT on GPT2LMHeadModel, one training step.

Both sides start from the same random GPT-2 weights (one save_pretrained directory), adapt the same modules
with the same r and alpha, and train on the same batch with AdamW; a third side fully fine-tunes our model,
for the optimizer-state comparison.

- Step time: one process holds all three and times their steps in turn (ours, PEFT, full, ours, ...), keeping
  each side's best: load from other programs then hits every side alike.
- Memory: each side alone in a fresh process, so its peak is its own: on CPU the resident-set high-water
  mark (reset after loading, so it counts the weights and everything the steps add), on CUDA the peak
  allocated bytes.

    python bench.py lora                         # GPT-2 124M config on CPU, batch 2 x 128 tokens
    python bench.py lora --size tiny --batch 8   # a quick check
"""
import multiprocessing
import tempfile
import time

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
    p.add_argument("--repeat", type=int, default=5, help="timed steps per side, interleaved (best one reported)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.set_defaults(run=run_lora_bench)
