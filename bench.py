"""Side-by-side speed measurements. Each subcommand prints a markdown table of ratios against its peer.

    python bench.py tokenizer --english ../shared/data/shakespeare.txt --chinese ../shared/data/d2l_zh.txt
    python bench.py model | train | hellaswag | lora

Every number in README.md comes from one of these commands; the header line says where it ran.
"""
import argparse
import datetime
import platform
import time

import torch


def machine_header():
    """One line naming the date, the processor/GPU and the library versions: paste it above each table."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import os
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{datetime.date.today()} · {cpu} ({os.cpu_count()} cores) · {gpu} · "
            f"Python {platform.python_version()} · torch {torch.__version__} · torch threads {torch.get_num_threads()}")


def best_time(fn, repeat=3, warmup=1):
    """Best wall time of `repeat` calls after `warmup` calls (the minimum is the least noisy estimate)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def markdown_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# python bench.py model: generation and training-step speed of model.GPT vs transformers' GPT2LMHeadModel
# ---------------------------------------------------------------------------------------------
def _twin_models(config):
    """Our GPT and HuggingFace's GPT2LMHeadModel holding identical weights (random, GPT-2 init)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from model import GPT
    torch.manual_seed(0)
    ours = GPT(config)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size,
                                    n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head))
    hf.load_state_dict({k: (v.t() if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else v)
                        for k, v in ours.state_dict().items()})
    hf.generation_config.eos_token_id = None  # never stop early: both produce exactly max_new_tokens
    hf.generation_config.pad_token_id = 0
    return ours, hf


def bench_model(args):
    from model import GPT_SIZES, GPTConfig
    torch.set_num_threads(args.threads)
    config = GPTConfig(**GPT_SIZES["gpt2"]) if args.size == "124M" else \
        GPTConfig(block_size=512, vocab_size=50257, n_layer=4, n_head=4, n_embd=256)
    device = args.device
    ours, hf = (m.to(device).eval() for m in _twin_models(config))
    print(f"\nGeneration, GPT-2 {args.size} config, random weights, {device}, greedy, prompt {args.prompt_len} "
          f"tokens + {args.new_tokens} new (tokens/s = new tokens x batch / wall time)\n")
    rows = []
    for batch in args.batch:
        prompt = torch.randint(0, config.vocab_size, (batch, args.prompt_len), device=device)
        with torch.inference_mode():
            same = torch.equal(ours.generate(prompt, 16, temperature=0),
                               hf.generate(prompt, max_new_tokens=16, do_sample=False))
            t_hf = best_time(lambda: hf.generate(prompt, max_new_tokens=args.new_tokens, do_sample=False),
                             repeat=args.repeat)
            t_ours = best_time(lambda: ours.generate(prompt, args.new_tokens, temperature=0), repeat=args.repeat)
            t_nocache = None
            if batch == 1:  # the no-cache path re-reads the whole prefix every step: measured once, batch 1
                t_nocache = best_time(lambda: ours.generate(prompt, args.new_tokens, temperature=0,
                                                            use_cache=False), repeat=1, warmup=0)
        tps = lambda t: batch * args.new_tokens / t  # noqa: E731
        rows.append([batch, f"{tps(t_ours):.1f}", f"{tps(t_hf):.1f}", f"**{t_hf / t_ours:.2f}x**",
                     f"{tps(t_nocache):.1f}" if t_nocache else "-",
                     f"**{t_nocache / t_ours:.1f}x**" if t_nocache else "-", "yes" if same else "NO"])
    print(markdown_table(["batch", "ours, KV cache (tok/s)", "HF generate (tok/s)", "ours / HF",
                          "ours, no cache (tok/s)", "cache / no cache", "same greedy tokens"], rows))

    B, T = args.train_batch, args.train_seq
    x = torch.randint(0, config.vocab_size, (B, T + 1), device=device)
    idx, targets = x[:, :-1], x[:, 1:]
    ours.train(), hf.train()

    def step_ours():
        ours.zero_grad(set_to_none=True)
        ours(idx, targets)[1].backward()

    def step_hf():
        hf.zero_grad(set_to_none=True)
        hf(input_ids=x, labels=x).loss.backward()  # HF shifts labels inside: same T predictions

    t_ours, t_hf = best_time(step_ours, repeat=args.repeat), best_time(step_hf, repeat=args.repeat)
    print(f"\nForward + backward, GPT-2 {args.size} config, B={B}, T={T}, fp32, {device}\n")
    print(markdown_table(["model", "step (ms)", "tokens/s", "ratio"], [
        ["ours (model.GPT)", f"{t_ours * 1e3:.0f}", f"{B * T / t_ours:.0f}", f"**{t_hf / t_ours:.2f}x**"],
        ["HF GPT2LMHeadModel", f"{t_hf * 1e3:.0f}", f"{B * T / t_hf:.0f}", "1.00x"]]))
    if device.startswith("cuda"):
        _bench_model_gpu_mfu(ours, config, args)


def _bench_model_gpu_mfu(ours, config, args):
    """On a GPU: forward+backward throughput and MFU at the training settings (bf16 autocast, flash)."""
    from model import peak_flops
    B, T = 16, config.block_size
    x = torch.randint(0, config.vocab_size, (B, T + 1), device=args.device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = ours(x[:, :-1], x[:, 1:])[1]
        loss.backward()
        torch.cuda.synchronize()

    t = best_time(step, repeat=5, warmup=2)
    peak = peak_flops(args.device)
    mfu = f"{ours.estimate_mfu(B * T / t, peak) * 100:.1f}%" if peak else "unknown card"
    print(f"\nGPU forward+backward, bf16 autocast, B={B}, T={T}: {B * T / t:.0f} tokens/s, MFU {mfu}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("model", help="generation and forward+backward speed vs transformers")
    p.add_argument("--size", choices=["124M", "small"], default="124M")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-seq", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.set_defaults(run=bench_model)
    args = parser.parse_args()
    print(machine_header())
    args.run(args)


if __name__ == "__main__":
    main()
