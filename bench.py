"""Side-by-side speed measurements. Each subcommand prints a markdown table of ratios against its peer.

    python bench.py tokenizer --english ../shared/data/shakespeare.txt --chinese ../shared/data/d2l_zh.txt
    python bench.py model | train | hellaswag | lora

Every number in README.md comes from one of these commands; the header line says where it ran.
"""
import argparse
import datetime
import platform
import time


def machine_header():
    """One line naming the date, the processor/GPU and the library versions: paste it above each table."""
    import torch
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    # (subcommands are registered below as each area's benchmark lands)
    args = parser.parse_args()
    print(machine_header())
    args.run(args)


if __name__ == "__main__":
    main()
