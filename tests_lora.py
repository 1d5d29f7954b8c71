"""Tests of lora.py: identity at init, merge/unmerge, equality with HuggingFace PEFT, masking, adapters, CLI."""
from test_all import *  # noqa: F401,F403  (fixtures: offline_tiktoken (autouse), gpt2_enc)

import argparse
import http.server
import math
import os
import subprocess
import sys
import threading

import pytest
import torch

import lora
import model as gpt

_LORA_ALL_TARGETS = ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]


@pytest.fixture
def lora_one_thread():
    """Tiny models run faster on one thread (no OpenMP hand-offs), and a busy 2-core CI box stays usable."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _lora_tiny_gpt(seed=0, gain=8.0, vocab_size=257):
    """A tiny random GPT. A random model's frozen ln_f/lm_head can only produce nearly flat logits; raising
    ln_f's gain gives the (frozen) head enough range for a low-rank update to express a task."""
    torch.manual_seed(seed)
    m = gpt.GPT(gpt.GPTConfig(block_size=128, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        m.transformer.ln_f.weight.fill_(gain)
    return m.eval()


def _lora_randomize_B(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.lora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)


def _lora_task_file(path, n=400, seed=0):
    """A synthetic prompt||completion task in the E2E format: the completion repeats the prompt's slots."""
    import random
    rng = random.Random(seed)
    names = ["Alimentum", "Aromi", "Bibimbap", "Cotto", "Giraffe", "Zizzi", "Wildwood", "Strada"]
    foods = ["Chinese", "English", "French", "Indian", "Italian", "Japanese"]
    with open(path, "w") as f:
        for _ in range(n):
            name, food = rng.choice(names), rng.choice(foods)
            f.write(f"name : {name} | food : {food}||{name} serves {food} food .\n")
    return str(path)


def _lora_tiny_hf(tmp_path):
    """A tiny random HuggingFace GPT-2 (saved with save_pretrained) and the same weights in our GPT."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=101)).eval()
    hf.save_pretrained(tmp_path / "hf")
    return hf, gpt.GPT.from_pretrained(str(tmp_path / "hf")).eval()


def _lora_idx(vocab=101, shape=(2, 16), seed=3):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# The adapter layer
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", [["qv"], _LORA_ALL_TARGETS])
def test_lora_init_is_identity(targets):
    model = _lora_tiny_gpt()
    idx = _lora_idx(257)
    base_logits, _ = model(idx)
    lora.apply_lora(model, r=4, alpha=8, targets=targets)
    logits, _ = model(idx)
    assert torch.equal(logits, base_logits)  # B = 0: exactly the base, not just close
    assert all(layer.lora_A.abs().sum() > 0 for layer in lora.lora_layers(model))  # A is not zero


def test_lora_A_init_matches_peft_default():
    # kaiming_uniform(a=sqrt(5)) draws from U(-1/sqrt(in), 1/sqrt(in)), as PEFT's default init does.
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(0)
    ours = lora.LoRALinear(torch.nn.Linear(256, 300), r=64, alpha=64)
    peft_model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(256, 300)),
                                LoraConfig(r=64, lora_alpha=64, target_modules=["0"]))
    theirs = peft_model.base_model.model[0].lora_A["default"].weight
    bound = 1 / math.sqrt(256)
    for A in (ours.lora_A, theirs):
        assert A.shape == (64, 256)
        assert A.abs().max() <= bound and A.abs().max() > 0.99 * bound
        assert abs(A.std().item() - bound / math.sqrt(3)) < 0.02 * bound  # a uniform's std: bound / sqrt(3)
    assert torch.equal(peft_model.base_model.model[0].lora_B["default"].weight, torch.zeros(300, 64))


@pytest.mark.parametrize("targets", [["qv"], _LORA_ALL_TARGETS])
def test_lora_merge_equals_unmerged_and_unmerge_restores(targets):
    model = _lora_tiny_gpt()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    lora.apply_lora(model, r=4, alpha=8, targets=targets)
    _lora_randomize_B(model)
    idx = _lora_idx(257)
    unmerged, _ = model(idx)
    base_logits = _lora_tiny_gpt()(idx)[0]
    assert (unmerged - base_logits).abs().max() > 1e-3  # the adapters really change the output
    for layer in lora.lora_layers(model):
        layer.merge()
        layer.merge()  # a second merge is a no-op, not a double add
    merged, _ = model(idx)
    assert (merged - unmerged).abs().max() <= 1e-5  # merged forward does not count B A twice
    for layer in lora.lora_layers(model):
        layer.unmerge()
    for name, value in model.state_dict().items():
        if name in base:
            assert torch.allclose(value, base[name], rtol=0, atol=1e-6), name  # W + d - d, fp32 rounding only
    assert (model(idx)[0] - unmerged).abs().max() <= 1e-5


def test_lora_trainable_count_and_tied_head():
    model = _lora_tiny_gpt()
    n_embd, L = 32, 2
    total_before = sum(p.numel() for p in model.parameters())
    wrapped = lora.apply_lora(model, r=4, alpha=8, targets=_LORA_ALL_TARGETS)
    assert len(wrapped) == 4 * L
    shapes = {"attn.c_attn": (n_embd, 3 * n_embd), "attn.c_proj": (n_embd, n_embd),
              "mlp.c_fc": (n_embd, 4 * n_embd), "mlp.c_proj": (4 * n_embd, n_embd)}
    expected = L * sum(4 * (i + o) for i, o in shapes.values())
    trainable, total = lora.count_params(model)
    assert trainable == expected and total == total_before + expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {f"transformer.h.{i}.{m}.lora_{x}" for i in range(L) for m in shapes for x in "AB"}
    assert model.lm_head.weight is model.transformer.wte.weight and not model.lm_head.weight.requires_grad
    # The paper's q/v-only variant: two rank-r adapters per c_attn, on its q and v output blocks.
    model = _lora_tiny_gpt()
    lora.apply_lora(model, r=4, alpha=8, targets=["qv"])
    assert lora.count_params(model)[0] == L * 2 * 4 * (n_embd + n_embd)
    layer = model.transformer.h[0].attn.c_attn
    assert layer.lora_A.shape == (2 * 4, n_embd) and layer.lora_B.shape == (2 * n_embd, 4)
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        lora.apply_lora(_lora_tiny_gpt(), targets=["q_proj"])


def test_lora_qv_only_touches_q_and_v():
    model = _lora_tiny_gpt()
    lora.apply_lora(model, r=2, alpha=4, targets=["qv"])
    _lora_randomize_B(model)
    layer = model.transformer.h[0].attn.c_attn
    x = torch.randn(3, 5, 32)
    delta = layer(x) - torch.nn.functional.linear(x, layer.weight, layer.bias)
    (A_q, A_v), (B_q, B_v) = layer.lora_A.split(2), layer.lora_B.split(32)
    s = 4 / 2
    assert torch.allclose(delta[..., :32], s * x @ A_q.T @ B_q.T, atol=1e-6)
    assert torch.equal(delta[..., 32:64], torch.zeros_like(delta[..., 32:64]))  # k untouched
    assert torch.allclose(delta[..., 64:], s * x @ A_v.T @ B_v.T, atol=1e-6)
    dw = layer.delta_weight()
    assert torch.equal(dw[32:64], torch.zeros_like(dw[32:64]))


# ---------------------------------------------------------------------------------------------
# Equal to PEFT
# ---------------------------------------------------------------------------------------------


def _lora_peft(hf, r, alpha, targets, rslora=False):
    from peft import LoraConfig, get_peft_model
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets,
                        fan_in_fan_out=True, use_rslora=rslora)  # GPT-2's Conv1D stores (in, out)
    return get_peft_model(hf, config).eval()


def _lora_peft_layers(peft_model):
    """Our module name -> PEFT's LoRA layer, e.g. 'transformer.h.0.attn.c_attn'."""
    prefix = "base_model.model."
    return {name[len(prefix):]: m for name, m in peft_model.named_modules() if hasattr(m, "lora_A")
            and "default" in getattr(m, "lora_A", {})}


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_equals_peft(tmp_path, rslora):
    hf, ours = _lora_tiny_hf(tmp_path)
    peft_model = _lora_peft(hf, r=4, alpha=16, targets=_LORA_ALL_TARGETS, rslora=rslora)
    with torch.no_grad():  # PEFT starts with B = 0 too: give it nonzero B so the adapters matter
        for m in _lora_peft_layers(peft_model).values():
            m.lora_B["default"].weight.normal_(0, 0.2)
    lora.apply_lora(ours, r=4, alpha=16, targets=_LORA_ALL_TARGETS, rslora=rslora)
    peft_layers = _lora_peft_layers(peft_model)
    ours_layers = {n: m for n, m in ours.named_modules() if isinstance(m, lora.LoRALinear)}
    assert peft_layers.keys() == ours_layers.keys() and len(ours_layers) == 8
    with torch.no_grad():
        for name, layer in ours_layers.items():
            # PEFT keeps A as nn.Linear(in, r) and B as nn.Linear(r, out): weights (r, in) and (out, r),
            # the same layout as ours even for Conv1D (fan_in_fan_out only transposes the merged delta).
            A, B = peft_layers[name].lora_A["default"].weight, peft_layers[name].lora_B["default"].weight
            assert A.shape == layer.lora_A.shape and B.shape == layer.lora_B.shape
            layer.lora_A.copy_(A)
            layer.lora_B.copy_(B)
            assert layer.scaling == peft_layers[name].scaling["default"]
    idx = _lora_idx()
    expected = peft_model(idx).logits
    got, _ = ours(idx)
    assert (got - expected).abs().max() <= 1e-5
    # The base alone differs clearly, so the comparison above really exercises the adapters.
    with peft_model.disable_adapter():
        assert (peft_model(idx).logits - expected).abs().max() > 1e-2
    # Merged, ours still equals PEFT's (unmerged) output.
    for layer in ours_layers.values():
        layer.merge()
    assert (ours(idx)[0] - expected).abs().max() <= 1e-5
    # Same trainable parameter count as PEFT reports.
    assert lora.count_params(ours)[0] == peft_model.get_nb_trainable_parameters()[0]


def test_lora_qv_equals_peft_blockdiagonal(tmp_path):
    # PEFT cannot adapt part of a fused layer; our q/v pair of rank-r adapters equals one PEFT adapter of
    # rank 2r on c_attn with A = [A_q; A_v] and B = [[B_q, 0], [0, 0], [0, B_v]] (alpha doubled, since
    # PEFT scales by alpha / (2r)).
    hf, ours = _lora_tiny_hf(tmp_path)
    r, alpha, n = 2, 8, 32
    peft_model = _lora_peft(hf, r=2 * r, alpha=2 * alpha, targets=["c_attn"])
    lora.apply_lora(ours, r=r, alpha=alpha, targets=["qv"])
    g = torch.Generator().manual_seed(5)
    peft_layers = _lora_peft_layers(peft_model)
    with torch.no_grad():
        for name, layer in ((n_, m) for n_, m in ours.named_modules() if isinstance(m, lora.LoRALinear)):
            A = peft_layers[name].lora_A["default"].weight  # (2r, in): rows [A_q; A_v]
            B = torch.zeros(3 * n, 2 * r)
            B_q, B_v = torch.randn(n, r, generator=g), torch.randn(n, r, generator=g)
            B[:n, :r], B[2 * n:, r:] = B_q, B_v
            peft_layers[name].lora_B["default"].weight.copy_(B)
            layer.lora_A.copy_(A)
            layer.lora_B.copy_(torch.cat([B_q, B_v]))
    idx = _lora_idx()
    expected = peft_model(idx).logits
    with peft_model.disable_adapter():
        assert (peft_model(idx).logits - expected).abs().max() > 1e-2
    assert (ours(idx)[0] - expected).abs().max() <= 1e-5


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def test_lora_data_formats(tmp_path):
    tok = gpt.get_tokenizer("byte")
    (tmp_path / "a.jsonl").write_text('{"prompt": "Q: 2+2?", "completion": " 4"}\n\n{"prompt": "Q: 1+1?", '
                                      '"completion": " 2"}\n')
    assert lora.read_examples(str(tmp_path / "a.jsonl")) == [("Q: 2+2?", " 4"), ("Q: 1+1?", " 2")]
    (tmp_path / "e.txt").write_text("name : A | food : B||A serves B .\nname : C||C .\n")
    assert lora.read_examples(str(tmp_path / "e.txt")) == [("name : A | food : B||", "A serves B ."),
                                                          ("name : C||", "C .")]
    (tmp_path / "plain.txt").write_text("just some text\nwith || once\nand more")
    assert lora.read_examples(str(tmp_path / "plain.txt")) == [("", "just some text\nwith || once\nand more")]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        lora.read_examples(str(tmp_path / "bad.jsonl"))
    with pytest.raises(FileNotFoundError):
        lora.read_examples(str(tmp_path / "missing.txt"))
    # Pairs: prompt ids, completion ids, <|endoftext|>; truncated to block_size + 1.
    ex = lora.tokenize([("ab||", "cd")], tok, block_size=64)
    assert ex == [(list(b"ab||cd") + [256], 4)]
    assert lora.tokenize([("ab||", "cdefgh")], tok, block_size=5) == [(list(b"ab||cd"), 4)]
    # Plain text: chunks of block_size + 1 overlapping by one, so every token is a target exactly once.
    chunks = lora.tokenize([("", "abcdefghij")], tok, block_size=4)
    assert [c for c, _ in chunks] == [list(b"abcde"), list(b"efghi"), list(b"ij") + [256]]
    # The split keeps every prompt on one side.
    pairs = lora.read_examples(_lora_task_file(tmp_path / "task.txt", n=200))
    train, val = lora.split_examples(lora.tokenize(pairs, tok, 127), 0.2)
    assert len(train) + len(val) == 200 and val
    assert not {tuple(i[:n]) for i, n in train} & {tuple(i[:n]) for i, n in val}


def test_lora_gpt2_tokenizer_examples(gpt2_enc):
    tok = gpt.get_tokenizer("gpt2")
    (ids, n_prompt), = lora.tokenize([("name : Aromi||", "Aromi is a pub .")], tok, 512)
    assert ids == gpt2_enc.encode_ordinary("name : Aromi||") + gpt2_enc.encode_ordinary("Aromi is a pub .") + [50256]
    assert n_prompt == len(gpt2_enc.encode_ordinary("name : Aromi||"))


def test_lora_prompt_masking():
    tok = gpt.get_tokenizer("byte")
    examples = lora.tokenize([("name : X||", "X ."), ("a longer prompt||", "yes")], tok, 64)
    x, y = lora.collate(examples, pad_id=tok.eot_token)
    for b, (ids, n_prompt) in enumerate(examples):
        n = len(ids) - 1
        assert x[b, :n].tolist() == ids[:-1]
        assert (y[b, :n_prompt - 1] == -1).all()              # prompt tokens are never targets
        assert y[b, n_prompt - 1:n].tolist() == ids[n_prompt:]  # every completion token and <|endoftext|> is
        assert (y[b, n:] == -1).all()                         # padding is ignored
    # Changing a prompt token's target does not change the loss: rebuild the targets from a sequence whose
    # prompt differs (as a target; the inputs stay the same) and compare the losses.
    model = _lora_tiny_gpt()
    lora.apply_lora(model, r=4, alpha=8, targets=_LORA_ALL_TARGETS)
    _lora_randomize_B(model)
    ids, n_prompt = examples[1]
    changed = [(ids[:3] + [ord("Z")] + ids[4:], n_prompt)]
    _, y_changed = lora.collate(changed, tok.eot_token)
    y1 = y[1:2, :y_changed.size(1)]
    assert torch.equal(y1, y_changed)
    x1 = x[1:2, :y_changed.size(1)]
    loss_a = lora.sum_loss(model, x1, y1, "cpu")
    loss_b = lora.sum_loss(model, x1, y_changed, "cpu")
    assert loss_a == loss_b
    # The masked sum equals a hand-computed cross-entropy over the completion positions only.
    logits, _ = model(x1)
    logp = torch.log_softmax(logits[0].float(), -1)
    by_hand = -sum(logp[t, ids[t + 1]] for t in range(n_prompt - 1, len(ids) - 1))
    assert abs(loss_a.item() - by_hand.item()) <= 1e-4 * abs(by_hand.item())
    # And unmasking a prompt target does change it (the check above can fail).
    y_unmasked = y1.clone()
    y_unmasked[0, 2] = ids[3]
    assert lora.sum_loss(model, x1, y_unmasked, "cpu") != loss_a


def test_lora_generation_stops_at_eot():
    model = _lora_tiny_gpt()
    tok = gpt.get_tokenizer("byte")
    script = [ord("h"), ord("i"), tok.eot_token, ord("X"), ord("Y")]

    class ScriptedHead(torch.nn.Module):  # the n-th call predicts script[n]
        calls, weight = 0, torch.zeros(1)  # (complete() reads lm_head.weight.dtype for its KV cache)

        def forward(self, h):
            logits = torch.zeros(*h.shape[:-1], model.config.padded_vocab_size)
            logits[..., script[min(self.calls, len(script) - 1)]] = 1.0
            self.calls += 1
            return logits

    model.lm_head = ScriptedHead()
    assert lora.complete(model, list(b"ab||"), tok, "cpu", max_new_tokens=10) == "hi"


# ---------------------------------------------------------------------------------------------
# Downloading E2E (real requests against a local HTTP server)
# ---------------------------------------------------------------------------------------------


def test_lora_e2e_download(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    for split in ("train", "valid", "test"):
        (served / f"{split}.txt").write_text(f"name : {split} | area : x||{split} is in x .\n" * 3)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(served), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    monkeypatch.setattr(lora, "E2E_URL", f"http://127.0.0.1:{port}/{{split}}.txt")
    try:
        paths = lora.download_e2e(str(tmp_path / "cache"))
    finally:
        server.shutdown()
        server.server_close()
    for split, path in paths.items():
        assert open(path).read() == (served / f"{split}.txt").read_text()
    assert lora.read_examples(paths["valid"])[0] == ("name : valid | area : x||", "valid is in x .")
    assert lora.download_e2e(str(tmp_path / "cache")) == paths  # cached: no server needed any more
    # Offline (nothing listens on the port now): one clear line that points to --data FILE, no partial file.
    with pytest.raises(ValueError, match="--data FILE") as err:
        lora.download_e2e(str(tmp_path / "cache2"))
    assert "\n" not in str(err.value)
    assert os.listdir(tmp_path / "cache2") == []
    # A 404 is an error too, not an HTML page saved as data.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(lora, "E2E_URL", f"http://127.0.0.1:{server.server_address[1]}/nope/{{split}}.txt")
    try:
        with pytest.raises(ValueError, match="HTTPError"):
            lora.download_e2e(str(tmp_path / "cache3"))
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------
# Training, adapter files
# ---------------------------------------------------------------------------------------------


def test_lora_training_changes_only_lora_and_learns(tmp_path, lora_one_thread):
    tok = gpt.get_tokenizer("byte")
    model = _lora_tiny_gpt()
    pairs = lora.read_examples(_lora_task_file(tmp_path / "task.txt"))
    train, val = lora.split_examples(lora.tokenize(pairs, tok, 127), 0.1)
    base_loss = lora.evaluate(model, val, 32, "cpu", tok.eot_token)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    lora.apply_lora(model, r=8, alpha=16, targets=_LORA_ALL_TARGETS)
    lora_before = {k: v.clone() for k, v in lora.lora_state_dict(model).items()}
    args = argparse.Namespace(lr=1e-2, full_lr=None, weight_decay=0.0, seed=0, steps=25, warmup=3, batch_size=16,
                              grad_accum=2, grad_clip=1.0, eval_examples=64)
    stats = lora.train(model, train, val, args, "cpu", tok.eot_token)
    state = model.state_dict()
    for name, value in base.items():
        assert torch.equal(state[name], value), f"base weight {name} changed"
    assert all(not torch.equal(state[k], v) for k, v in lora_before.items())
    assert stats["trainable"] == lora.count_params(model)[0]
    assert stats["optimizer_bytes"] == 2 * 4 * stats["trainable"] + 4 * len(lora_before)  # exp_avg, exp_avg_sq, step
    # Clearly better than the base and than a uniform guess over the 257 byte tokens.
    assert stats["val_loss"] < base_loss - 1.0 and stats["val_loss"] < math.log(257) - 1.0, (base_loss, stats)


def test_lora_adapter_roundtrip_and_wrong_base(tmp_path):
    model = _lora_tiny_gpt()
    base_hash = lora.base_fingerprint(model)
    config = dict(r=4, alpha=8, dropout=0.0, targets=["qv", "mlp.c_proj"], rslora=True)
    lora.apply_lora(model, **config)
    _lora_randomize_B(model)
    assert lora.base_fingerprint(model) == base_hash  # adapters are not part of the base's identity
    path = str(tmp_path / "lora.pt")
    lora.save_adapter(path, model, config, "tiny.pt", base_hash, "byte")
    assert not os.path.exists(path + ".tmp")
    blob = lora.read_adapter(path)
    assert blob["base"] == {"path": "tiny.pt", "init": False, "sha256": base_hash}
    assert set(blob["lora"]) == {n for n, _ in model.named_parameters() if "lora_" in n}
    idx = _lora_idx(257)
    restored = lora.load_adapter(_lora_tiny_gpt(), blob)
    assert torch.equal(restored(idx)[0], model(idx)[0])
    with pytest.raises(ValueError, match="trained on base tiny.pt"):
        lora.load_adapter(_lora_tiny_gpt(seed=1), blob)
    with pytest.raises(ValueError, match="merged"):
        model.transformer.h[0].mlp.c_proj.merge()
        lora.base_fingerprint(model)
    torch.save({"model": {}}, tmp_path / "not_adapter.pt")
    with pytest.raises(ValueError, match="not a LoRA adapter"):
        lora.read_adapter(str(tmp_path / "not_adapter.pt"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable adapter"):
        lora.read_adapter(str(tmp_path / "junk.pt"))


# ---------------------------------------------------------------------------------------------
# The CLI, in a subprocess, on a tiny checkpoint
# ---------------------------------------------------------------------------------------------


def _lora_cli(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(HERE / "lora.py"), *args, "--device", "cpu"], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=300)


def test_lora_cli(tmp_path):
    gpt.save_checkpoint(str(tmp_path / "tiny.pt"), _lora_tiny_gpt(), "byte")
    gpt.save_checkpoint(str(tmp_path / "other.pt"), _lora_tiny_gpt(seed=1), "byte")
    data = _lora_task_file(tmp_path / "task.txt", n=200)
    common = ["--data", data, "--batch-size", "16", "--eval-examples", "32", "--samples", "1"]
    run = _lora_cli("--ckpt", "tiny.pt", *common, "--steps", "8", "--warmup", "2", "--lr", "1e-2", "--r", "4",
                    "--targets", "qv,mlp.c_proj", "--merge", "merged.pt", "--full", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    assert "trainable params 2,304 of" in out  # 2 layers x (2*4*(32+32) + 4*(128+32))
    assert "| optimizer state |" in out and "| final val loss |" in out
    assert "samples (LoRA):" in out
    # The merged checkpoint is an ordinary checkpoint and equals base + adapter.
    merged, ckpt = gpt.load_checkpoint(str(tmp_path / "merged.pt"))
    assert ckpt["tokenizer"] == "byte"
    adapted = lora.load_adapter(_lora_tiny_gpt(), lora.read_adapter(str(tmp_path / "log" / "lora.pt")))
    idx = _lora_idx(257)
    assert (merged.eval()(idx)[0] - adapted.eval()(idx)[0]).abs().max() <= 1e-5
    # --adapter: evaluate and sample with the saved adapter on its recorded base.
    run = _lora_cli("--adapter", "log/lora.pt", *common, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "val loss with adapter" in run.stdout
    # A different base is refused with one line, no traceback.
    run = _lora_cli("--adapter", "log/lora.pt", "--ckpt", "other.pt", *common, cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: adapter was trained on base tiny.pt")
    run = _lora_cli("--ckpt", "tiny.pt", "--data", "missing.txt", cwd=tmp_path)
    assert run.returncode == 1 and run.stderr.strip() == "error: data file missing.txt does not exist."


def test_lora_main_plain_text_and_offline_init(tmp_path, monkeypatch, capsys, lora_one_thread):
    monkeypatch.chdir(tmp_path)
    gpt.save_checkpoint("tiny.pt", _lora_tiny_gpt(), "byte")
    (tmp_path / "notes.txt").write_text("The adapter learns a low-rank update while the base stays frozen. " * 40)
    lora.main(["--ckpt", "tiny.pt", "--data", "notes.txt", "--steps", "2", "--batch-size", "4", "--block-size", "64",
               "--eval-examples", "8", "--samples", "1", "--out", "plain.pt", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "val loss: base" in out and "samples (LoRA):" in out
    blob = lora.read_adapter("plain.pt")
    assert blob["lora_config"]["targets"] == ["qv"] and blob["base"]["path"] == "tiny.pt"
    # Offline, --init gpt2 fails with one sentence (the CLI prints it as "error: ...").
    with pytest.raises(ValueError, match="could not load 'gpt2'") as err:
        lora.main(["--init", "gpt2", "--data", "notes.txt", "--device", "cpu"])
    assert "\n" not in str(err.value)
