from test_all import *  # noqa: F401,F403  (fixtures: offline_tiktoken (autouse), gpt2_enc)

# Tests of train_gpt2.py: the data loader, the optimizer groups and the schedule in-process; DDP equivalence,
# exact resume, the tiny preset and the one-line errors as real command-line runs (torchrun with gloo).
import math
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import train_gpt2
from model import GPT, GPTConfig

_TRAIN_HERE = pathlib.Path(__file__).resolve().parent
_TRAIN_SCRIPT = str(_TRAIN_HERE / "train_gpt2.py")
# A 2-layer, 32-wide byte-level model on T=32: each run takes a few seconds, most of it importing torch.
_TRAIN_SMALL = ["--preset", "tiny", "--tokenizer", "byte", "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
                "--seq-len", "32", "--batch-size", "4", "--lr", "3e-3", "--min-lr", "3e-4", "--warmup-steps", "3",
                "--val-steps", "2", "--sample-tokens", "8", "--num-samples", "1"]


def _train_env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    return env


def _train_run(args, torchrun=False, check=True, timeout=170):
    """Run train_gpt2.py (under torchrun with 2 gloo processes if asked); returns the CompletedProcess."""
    cmd = [sys.executable, _TRAIN_SCRIPT]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", _TRAIN_SCRIPT]
    result = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=_train_env(),
                            timeout=timeout, cwd=_TRAIN_HERE)
    if check and result.returncode != 0:
        raise AssertionError(f"train_gpt2.py failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _train_shards(tmp_path, sizes=(2000, 300, 517, 211), seed=0):
    """fineweb.py-style shards (shard 0 = val) of byte ids with some structure to learn: a repeated text."""
    out = tmp_path / "shards"
    out.mkdir()
    text = np.frombuffer(b"the tokenizer reads the manual; the model learns the words. " * 200, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    for i, n in enumerate(sizes):
        start = int(rng.integers(0, len(text) - n))
        name = f"edufineweb_{'val' if i == 0 else 'train'}_{i:06d}.npy"
        np.save(out / name, text[start:start + n].astype(np.uint16))
    return out


def _train_log(log_dir, kind):
    """{step: value} of one kind ('train', 'val', 'hella') from log.txt."""
    values = {}
    for line in (pathlib.Path(log_dir) / "log.txt").read_text().splitlines():
        step, k, value = line.split()
        if k == kind:
            values[int(step)] = float(value)
    return values


def _train_ckpt(log_dir, name="model.pt"):
    return torch.load(pathlib.Path(log_dir) / name, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------
# Data loader
# ---------------------------------------------------------------------------------------------
def _train_stream(loaders, steps):
    """Concatenate what the ranks read, step by step, rank by rank (the order of the global stream)."""
    xs, ys = [], []
    for _ in range(steps):
        for loader in loaders:
            x, y = loader.next_batch()
            xs.append(x.reshape(-1))
            ys.append(y.reshape(-1))
    return torch.cat(xs), torch.cat(ys)


def test_train_loader_ranks_disjoint_and_no_token_lost_at_shard_ends():
    # Distinct ids everywhere, shard lengths that no batch size divides: every token shows up exactly once
    # per pass, in order, whatever the shard ends are; rank r reads the r-th slice of each global batch.
    sizes = [37, 50, 23, 91]
    shards, start = [], 0
    for n in sizes:
        shards.append(np.arange(start, start + n, dtype=np.int64))
        start += n
    everything = np.concatenate(shards)
    B, T, world = 2, 4, 3
    loaders = [train_gpt2.DataLoader(shards, B, T, rank, world, shuffle=False) for rank in range(world)]
    steps = 2 * len(everything) // (B * T * world) + 1  # more than two epochs
    x, y = _train_stream(loaders, steps)
    expected = np.tile(everything, 4)[:len(x) + 1]
    assert x.tolist() == expected[:-1].tolist()
    assert y.tolist() == expected[1:].tolist()  # targets: the next token, also across shard ends
    # The slices of one step do not overlap: rank r holds tokens [r*B*T, (r+1)*B*T) of the global batch.
    fresh = [train_gpt2.DataLoader(shards, B, T, rank, world, shuffle=False) for rank in range(world)]
    firsts = [set(loader.next_batch()[0].reshape(-1).tolist()) for loader in fresh]
    assert all(not (firsts[a] & firsts[b]) for a in range(world) for b in range(a + 1, world))
    assert firsts[1] == set(range(B * T, 2 * B * T))


def test_train_loader_shuffle_is_a_seeded_permutation_of_each_epoch():
    sizes = [37, 50, 23, 91]
    shards, start = [], 0
    for n in sizes:
        shards.append(np.arange(start, start + n, dtype=np.int64))
        start += n
    total = sum(sizes)
    B, T = 3, 5

    def epochs(seed, n_epochs=3):
        loader = train_gpt2.DataLoader(shards, B, T, shuffle=True, seed=seed)
        x, _ = _train_stream([loader], n_epochs * total // (B * T) + 1)
        return [x[e * total:(e + 1) * total].tolist() for e in range(n_epochs)]

    a, again, other = epochs(1), epochs(1), epochs(2)
    assert a == again                          # reproducible from the seed
    assert a != other                          # and the seed matters
    for epoch in a:
        assert sorted(epoch) == list(range(total))  # every token exactly once per epoch: nothing lost
    assert a[0] != a[1] != a[2]                # a new order / new offsets every epoch
    assert a[0] != list(range(total))          # not the unshuffled order
    # Each shard is read as one rotated run: inside an epoch consecutive ids step by +1 except at the
    # (at most 2 per shard) seams where a shard wraps around or the next shard begins.
    seams = sum(1 for p, q in zip(a[0], a[0][1:]) if q != p + 1)
    assert seams <= 2 * len(sizes)


def test_train_loader_position_resumes_exactly():
    shards = [np.arange(100, dtype=np.int64), np.arange(100, 177, dtype=np.int64)]
    loader = train_gpt2.DataLoader(shards, 2, 8, rank=1, world=2, shuffle=True, seed=7)
    for _ in range(9):
        loader.next_batch()
    state = loader.state()
    rest = [loader.next_batch()[1].tolist() for _ in range(12)]
    again = train_gpt2.DataLoader(shards, 2, 8, rank=1, world=2, shuffle=True, seed=7)
    again.load_state(state)
    assert [again.next_batch()[1].tolist() for _ in range(12)] == rest
    assert all(isinstance(v, int) for v in state.values())  # plain ints: fine for weights_only loading


# ---------------------------------------------------------------------------------------------
# Optimizer groups and the learning rate schedule
# ---------------------------------------------------------------------------------------------
def test_train_lr_schedule_warmup_peak_and_end():
    lr = lambda step: train_gpt2.get_lr(step, 6e-4, 6e-5, 715, 19073)  # noqa: E731  (the 124M recipe)
    assert lr(0) == pytest.approx(6e-4 / 715, rel=1e-12)            # warmup start: one step's worth
    assert lr(357) == pytest.approx(6e-4 * 358 / 715, rel=1e-12)    # linear
    assert lr(714) == pytest.approx(6e-4, rel=1e-12)                # peak at the end of warmup
    assert lr(715) == pytest.approx(6e-4, rel=1e-12)                # cosine starts at the peak
    assert lr((715 + 19073) / 2) == pytest.approx((6e-4 + 6e-5) / 2, rel=1e-12)  # halfway: the mean
    assert lr(19072) == pytest.approx(6e-5, rel=1e-6)               # the last step: (almost) the minimum
    assert lr(19073) == lr(30000) == 6e-5                           # and after the end, the minimum
    lrs = [lr(s) for s in range(715, 19074, 97)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))                # monotone decay


def test_train_decay_groups():
    model = GPT(GPTConfig(block_size=16, vocab_size=257, n_layer=3, n_head=2, n_embd=32, vocab_multiple=64))
    opt = train_gpt2.make_optimizer(model, lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    # Decay: the embeddings (wte is also lm_head: one tensor, counted once) and the 4 matmul weights per layer.
    assert decay_names == {"transformer.wte.weight", "transformer.wpe.weight"} | {
        f"transformer.h.{i}.{m}.weight" for i in range(3) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert len(decay["params"]) == 2 + 4 * 3
    # No decay: every bias and every LayerNorm parameter, nothing else.
    assert no_decay_names and all(n.endswith(".bias") or ".ln_" in n for n in no_decay_names)
    assert {n for n, p in model.named_parameters() if n.endswith(".bias") or ".ln_" in n} == no_decay_names
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert model.lm_head.weight is model.transformer.wte.weight
    counted = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert counted == model.num_params() == sum(p.numel() for p in model.parameters())
    # the tied matrix once: 3 layers x (12 d^2 + 13 d) + ln_f (2d) + wte (320 x d) + wpe (16 x d), d = 32
    assert counted == 3 * (12 * 32 * 32 + 13 * 32) + 2 * 32 + 320 * 32 + 16 * 32


# ---------------------------------------------------------------------------------------------
# Real runs
# ---------------------------------------------------------------------------------------------
def test_train_ddp_two_gloo_processes_equal_one_process_with_accumulation(tmp_path):
    # 2 processes x 1 micro-step of B=4 vs 1 process x 2 micro-steps of B=4: the same 256 tokens per step
    # (the global batch is cut into B*T slices in the same order either way), the same mean loss.
    shards = _train_shards(tmp_path)
    common = _TRAIN_SMALL + ["--data", shards, "--total-batch-size", 2 * 4 * 32, "--max-steps", 6,
                             "--eval-every", 3, "--ckpt-every", 6]
    one = _train_run(common + ["--log-dir", tmp_path / "one"])
    assert "2 micro-step(s) x 1 process(es)" in one.stdout
    two = _train_run(common + ["--log-dir", tmp_path / "two"], torchrun=True)
    assert "1 micro-step(s) x 2 process(es)" in two.stdout
    # The two compute the same sums in a different order: one process backpropagates l0/2 and l1/2 and adds
    # the gradients in .grad (g0/2 + g1/2); DDP backpropagates l0 and l1 on two ranks, all-reduces g0 + g1 and
    # divides by 2. In general that is float summation order and differs by a few ulps. With exactly two
    # terms it is not even that: a + b == b + a in IEEE arithmetic, and scaling by 1/2 is exact (a power of
    # two; no value here is near underflow), so g0/2 + g1/2 == (g0 + g1)/2 bit for bit. Both runs use one
    # thread and the same B=4 micro-batch shapes, hence the same kernels. So the check is exact: every logged
    # loss and every weight. (With 3 processes vs 3 micro-steps it would need a tolerance of a few ulps.)
    for kind in ("train", "val"):
        a, b = _train_log(tmp_path / "one", kind), _train_log(tmp_path / "two", kind)
        assert len(a) == (6 if kind == "train" else 3)
        assert a == b, kind
    wa, wb = _train_ckpt(tmp_path / "one")["model"], _train_ckpt(tmp_path / "two")["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # And both are right, not just equal: rebuild the initial model (same seed and config) and the two
    # ranks' first slices in-process; the logged step-0 loss is the mean of the two slices' losses, which
    # differ from each other (each rank really reads its own data).
    torch.manual_seed(1337)
    model = GPT(GPTConfig(block_size=32, vocab_size=257, n_layer=2, n_head=2, n_embd=32, vocab_multiple=64))
    train = [np.load(f) for f in sorted(shards.glob("*_train_*.npy"))]
    losses = [model(*train_gpt2.DataLoader(train, 4, 32, rank, 2, shuffle=True, seed=1337).next_batch())[1].item()
              for rank in range(2)]
    assert abs(losses[0] - losses[1]) > 1e-3
    assert _train_log(tmp_path / "two", "train")[0] == pytest.approx(sum(losses) / 2, abs=2e-6)
    assert _train_log(tmp_path / "one", "train")[5] < _train_log(tmp_path / "one", "train")[0]


def _train_assert_same_run(dir_a, dir_b):
    """Bit-identical weights and optimizer state, identical log.txt (every loss, to the printed digit)."""
    a, b = _train_ckpt(dir_a), _train_ckpt(dir_b)
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["loader"] == b["loader"]
    assert (pathlib.Path(dir_a) / "log.txt").read_text() == (pathlib.Path(dir_b) / "log.txt").read_text()


def _train_interrupt(args, sig, after_step):
    """Start a run, send `sig` once it has printed step `after_step`, return (returncode, stdout)."""
    proc = subprocess.Popen([sys.executable, _TRAIN_SCRIPT] + [str(a) for a in args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_train_env(), cwd=_TRAIN_HERE)
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith(f"step {after_step:5d} |"):
            proc.send_signal(sig)
            break
    out.append(proc.communicate(timeout=120)[0])
    return proc.returncode, "".join(out)


def test_train_resume_is_exact_after_stop_sigterm_and_kill9(tmp_path):
    shards = _train_shards(tmp_path)
    n = 120
    common = _TRAIN_SMALL + ["--data", shards, "--total-batch-size", 128, "--max-steps", n, "--eval-every", 40,
                             "--ckpt-every", 20]
    _train_run(common + ["--log-dir", tmp_path / "straight"])
    assert _train_ckpt(tmp_path / "straight")["step"] == n

    # 1. --stop-at: stop after 50 steps (checkpoint written), then --resume to the end.
    _train_run(common + ["--log-dir", tmp_path / "stopped", "--stop-at", 50])
    assert _train_ckpt(tmp_path / "stopped")["step"] == 50
    _train_run(common + ["--log-dir", tmp_path / "stopped", "--resume"])
    _train_assert_same_run(tmp_path / "straight", tmp_path / "stopped")

    # 2. SIGTERM mid-run: the step finishes, a checkpoint is written, the exit is clean.
    rc, out = _train_interrupt(common + ["--log-dir", tmp_path / "term"], signal.SIGTERM, after_step=5)
    assert rc == 0 and "Traceback" not in out, out[-2000:]
    stopped_at = _train_ckpt(tmp_path / "term")["step"]
    assert 5 < stopped_at < n and f"stopped after step {stopped_at - 1}" in out
    _train_run(common + ["--log-dir", tmp_path / "term", "--resume"])
    _train_assert_same_run(tmp_path / "straight", tmp_path / "term")

    # 3. kill -9: whatever was being written, model.pt is the last complete checkpoint; log lines past it
    #    are dropped on resume and written again.
    rc, out = _train_interrupt(common + ["--log-dir", tmp_path / "kill"], signal.SIGKILL, after_step=45)
    assert rc == -signal.SIGKILL
    assert _train_ckpt(tmp_path / "kill")["step"] in range(40, n, 20)
    _train_run(common + ["--log-dir", tmp_path / "kill", "--resume"])
    _train_assert_same_run(tmp_path / "straight", tmp_path / "kill")


def test_train_tiny_preset_learns_manual_txt(tmp_path):
    # The README's main command, shortened (a smaller model, fewer steps): manual.txt, bytes, CPU.
    result = _train_run(["--preset", "tiny", "--n-layer", 2, "--n-embd", 64, "--seq-len", 64, "--batch-size", 8,
                         "--total-batch-size", 512, "--max-steps", 80, "--warmup-steps", 5, "--lr", 1e-2,
                         "--min-lr", 1e-3, "--eval-every", 40, "--keep-every", 40, "--log-dir", tmp_path / "log"])
    val = _train_log(tmp_path / "log", "val")
    train = _train_log(tmp_path / "log", "train")
    assert sorted(val) == [0, 40, 79] and sorted(train) == list(range(80))
    assert val[0] == pytest.approx(math.log(257), abs=0.3)  # untrained: about uniform over the byte ids
    # The yardstick: the val split's cross-entropy under the train split's byte frequencies (add-1/2
    # smoothed), i.e. the best a model ignoring context can do. Below it, the model reads its context.
    data = np.frombuffer((_TRAIN_HERE / "manual.txt").read_bytes(), dtype=np.uint8)
    split = int(0.9 * len(data))
    counts = np.bincount(data[:split], minlength=257) + 0.5
    unigram = float(-np.log(counts[data[split:]] / counts.sum()).mean())
    assert val[79] < unigram - 0.3 and val[79] < val[0] - 1.5, (val, unigram)
    assert "notice: HellaSwag skipped" in result.stdout and result.stdout.count("sample 0:") == 3
    assert (tmp_path / "log" / "loss.png").stat().st_size > 1000
    ckpt = _train_ckpt(tmp_path / "log")
    assert ckpt["step"] == 80 and ckpt["tokenizer"] == "byte" and ckpt["config"]["n_embd"] == 64
    assert _train_ckpt(tmp_path / "log", "model_00040.pt")["step"] == 40
    from model import load_checkpoint
    model, _ = load_checkpoint(str(tmp_path / "log" / "model.pt"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ckpt["model"].items())


def test_train_clear_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    shards = _train_shards(tmp_path)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.pt").write_bytes(b"not a checkpoint")
    base = _TRAIN_SMALL + ["--data", shards, "--max-steps", 3, "--eval-every", 0, "--ckpt-every", 1]
    cases = {
        "no shards": (_TRAIN_SMALL + ["--data", empty], "fineweb.py"),
        "indivisible": (base + ["--total-batch-size", 1000, "--log-dir", tmp_path / "a"], "not a multiple of"),
        "corrupt": (base + ["--total-batch-size", 128, "--log-dir", corrupt, "--resume"], "cannot resume"),
        "too short": (base + ["--total-batch-size", 128 * 80, "--batch-size", 320, "--log-dir", tmp_path / "b"],
                      "fewer than one batch"),
        "nan": (base + ["--total-batch-size", 128, "--lr", 1e30, "--warmup-steps", 0, "--log-dir", tmp_path / "n"],
                "the loss is"),
    }
    procs = {k: subprocess.Popen([sys.executable, _TRAIN_SCRIPT] + [str(a) for a in args], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=_train_env(), cwd=_TRAIN_HERE)
             for k, (args, _) in cases.items()}
    for key, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert proc.returncode == 1, (key, err)
        assert len(lines) == 1 and lines[0].startswith("error: ") and cases[key][1] in lines[0], (key, err)
    # NaN: it stopped before stepping on the bad gradients; the last good checkpoint is intact.
    good = _train_ckpt(tmp_path / "n")
    assert good["step"] >= 1 and all(torch.isfinite(v).all() for v in good["model"].values())
