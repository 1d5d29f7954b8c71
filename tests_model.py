from test_all import *  # noqa: F401,F403  (fixtures: offline_tiktoken (autouse), gpt2_enc)

import subprocess
import sys

import pytest
import torch

import model as gpt

# Tiny GPT-2 shapes: head counts 2, 3 and 5 (head sizes 16, 16, 8: not all powers of two, not all equal).
MODEL_SHAPES = [dict(n_layer=2, n_head=2, n_embd=32), dict(n_layer=3, n_head=3, n_embd=48),
                dict(n_layer=2, n_head=5, n_embd=40)]
TINY_VOCAB = 211


def _model_hf_dir(tmp_path, seed=0, **shape):
    """A tiny random transformers GPT2LMHeadModel written with save_pretrained; returns (hf_model, dir)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    config = GPT2Config(n_positions=64, vocab_size=TINY_VOCAB, bos_token_id=TINY_VOCAB - 1,
                        eos_token_id=TINY_VOCAB - 1, **shape)
    hf = GPT2LMHeadModel(config).eval()
    path = tmp_path / f"hf_{seed}_{shape['n_layer']}_{shape['n_head']}_{shape['n_embd']}"
    hf.save_pretrained(path)
    return hf, str(path)


def _model_next_targets(idx):
    """Targets for next-token prediction in our convention: shifted left, -1 where nothing follows."""
    return torch.cat([idx[:, 1:], torch.full_like(idx[:, :1], -1)], dim=1)


@pytest.mark.parametrize("shape", MODEL_SHAPES, ids=lambda s: f"L{s['n_layer']}H{s['n_head']}C{s['n_embd']}")
@pytest.mark.parametrize("attn", ["flash", "plain"])
def test_model_matches_huggingface_logits_and_loss(tmp_path, shape, attn):
    hf, path = _model_hf_dir(tmp_path, **shape)
    ours = gpt.GPT.from_pretrained(path, attn=attn).eval()
    idx = torch.randint(0, TINY_VOCAB, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(idx, labels=idx)  # HF shifts labels inside
        logits, loss = ours(idx, _model_next_targets(idx))
    assert logits.shape == ref.logits.shape
    torch.testing.assert_close(logits, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, ref.loss, atol=1e-5, rtol=0)


def test_model_per_token_losses_match_huggingface(tmp_path):
    """reduction='none' (lm_head only where a target exists) equals per-token CE of HF's full logits."""
    hf, path = _model_hf_dir(tmp_path, **MODEL_SHAPES[1])
    ours = gpt.GPT.from_pretrained(path).eval()
    idx = torch.randint(0, TINY_VOCAB, (2, 30), generator=torch.Generator().manual_seed(2))
    targets = _model_next_targets(idx)
    targets[:, :12] = -1  # a "prompt" that is not scored
    with torch.no_grad():
        _, token_loss = ours(idx, targets, reduction="none")
        ref = torch.nn.functional.cross_entropy(hf(idx).logits.transpose(1, 2), targets, ignore_index=-1,
                                                reduction="none")
    torch.testing.assert_close(token_loss, ref, atol=1e-5, rtol=0)
    assert (token_loss[:, :12] == 0).all() and (token_loss[:, 12:-1] > 0).all()


def test_model_save_hf_round_trip_cuts_padded_vocab(tmp_path):
    from transformers import GPT2LMHeadModel
    _, path = _model_hf_dir(tmp_path, **MODEL_SHAPES[2])
    ours = gpt.GPT.from_pretrained(path, vocab_multiple=64).eval()
    assert ours.lm_head.weight.shape[0] == 256  # 211 padded up to a multiple of 64
    out = ours.save_hf(str(tmp_path / "export"))
    back = GPT2LMHeadModel.from_pretrained(out).eval()
    assert back.config.vocab_size == TINY_VOCAB
    idx = torch.randint(0, TINY_VOCAB, (2, 33), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(back(idx).logits, ours(idx)[0][..., :TINY_VOCAB], atol=1e-5, rtol=0)
    assert not (tmp_path / "export.tmp").exists()


def test_model_greedy_generation_equals_huggingface(tmp_path):
    hf, path = _model_hf_dir(tmp_path, **MODEL_SHAPES[0])
    ours = gpt.GPT.from_pretrained(path).eval()
    prompt = torch.randint(0, TINY_VOCAB, (3, 6), generator=torch.Generator().manual_seed(4))
    ref = hf.generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=TINY_VOCAB - 1)
    for use_cache in (True, False):
        assert torch.equal(ours.generate(prompt, 30, temperature=0, use_cache=use_cache), ref)


@pytest.mark.parametrize("sampling", [dict(), dict(top_k=20), dict(top_p=0.8, temperature=0.7)])
def test_model_cached_sampling_equals_uncached(sampling):
    # float64 so both paths pick the same token from the same random draw; 60 new tokens after a
    # 10-token prompt run past block_size 64, exercising the crop-and-rebuild path as well.
    torch.manual_seed(0)
    m = gpt.GPT(gpt.GPTConfig(block_size=64, vocab_size=97, n_layer=2, n_head=3, n_embd=24)).double().eval()
    prompt = torch.randint(0, 97, (2, 10))
    outs = []
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(123)
        outs.append(m.generate(prompt, 60, generator=g, use_cache=use_cache, **sampling))
    assert outs[0].shape == (2, 70)
    assert torch.equal(outs[0], outs[1])


def test_model_generate_never_samples_padded_ids():
    torch.manual_seed(0)
    m = gpt.GPT(gpt.GPTConfig(block_size=32, vocab_size=5, n_layer=1, n_head=1, n_embd=8, vocab_multiple=64))
    with torch.no_grad():
        m.lm_head.weight[5:] = 10.0  # make the padding rows by far the most likely
    out = m.generate(torch.zeros(4, 1, dtype=torch.long), 20, generator=torch.Generator().manual_seed(0))
    assert out.max() < 5


def test_model_published_parameter_counts():
    published = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
                 "gpt2-xl": 1_557_611_200}
    for name, count in published.items():
        with torch.device("meta"):  # shapes only, no memory
            model = gpt.GPT(gpt.GPTConfig(**gpt.GPT_SIZES[name]))
        assert model.num_params() == count, name
        assert model.lm_head.weight is model.transformer.wte.weight


def test_model_init_follows_gpt2_paper():
    torch.manual_seed(0)
    m = gpt.GPT(gpt.GPTConfig(block_size=64, vocab_size=1000, n_layer=8, n_head=4, n_embd=256))
    residual_std = 0.02 / (2 * 8) ** 0.5
    for name, p in m.named_parameters():
        if name.endswith("c_proj.weight"):
            assert abs(p.std().item() - residual_std) < 0.1 * residual_std, name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert abs(p.std().item() - 0.02) < 0.002, name
        elif name.endswith(".bias"):
            assert (p == 0).all(), name


def test_model_flops_per_token_matches_an_independent_flop_count():
    """torch's FlopCounterMode counts the matmuls of a real forward+backward (plain attention, so the
    attention matmuls are visible to it). The formula 6N + 12LHQT adds 6 FLOPs per token for each
    non-matmul parameter (biases, LayerNorm) too; apart from exactly that, the two must agree."""
    from torch.utils.flop_counter import FlopCounterMode
    m = gpt.GPT(gpt.GPTConfig(block_size=128, vocab_size=500, n_layer=2, n_head=4, n_embd=64, attn="plain"))
    idx = torch.randint(0, 500, (2, 128))
    with FlopCounterMode(display=False) as counter:
        m(idx, idx)[1].backward()
    vector_params = sum(p.numel() for p in m.parameters() if p.dim() == 1)
    assert m.flops_per_token() * idx.numel() - counter.get_total_flops() == 6 * vector_params * idx.numel()
    assert m.estimate_mfu(1000.0, 1e12) == pytest.approx(m.flops_per_token() * 1000 / 1e12)


def test_model_peak_flops_table(monkeypatch):
    assert gpt.peak_flops("cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, flops in [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                        ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA H200", 989e12), ("Some Future GPU", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None, n=name: n)
        assert gpt.peak_flops("cuda") == flops, name


def _model_tiny_checkpoint(path, tokenizer="byte", **extra):
    torch.manual_seed(0)
    m = gpt.GPT(gpt.GPTConfig(block_size=32, vocab_size=257, n_layer=2, n_head=2, n_embd=16, vocab_multiple=64))
    gpt.save_checkpoint(str(path), m, tokenizer, **extra)
    return m


def test_model_checkpoint_round_trip(tmp_path):
    path = tmp_path / "sub" / "model.pt"
    m = _model_tiny_checkpoint(path, step=7, note="hi")
    assert not (tmp_path / "sub" / "model.pt.tmp").exists()
    loaded, ckpt = gpt.load_checkpoint(str(path))
    assert ckpt["step"] == 7 and ckpt["note"] == "hi" and ckpt["tokenizer"] == "byte"
    assert ckpt["config"] == gpt.asdict(m.config) and isinstance(ckpt["config"], dict)
    for (n1, p1), (n2, p2) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # still tied after loading


def test_model_checkpoint_strips_wrapper_prefixes(tmp_path):
    m = _model_tiny_checkpoint(tmp_path / "a.pt")
    ckpt = torch.load(tmp_path / "a.pt", weights_only=True)
    ckpt["model"] = {"_orig_mod." + k: v for k, v in ckpt["model"].items()}  # as a compiled model names them
    torch.save(ckpt, tmp_path / "b.pt")
    loaded, _ = gpt.load_checkpoint(str(tmp_path / "b.pt"), dropout=0.1)
    assert loaded.config.dropout == 0.1
    assert torch.equal(loaded.lm_head.weight, m.lm_head.weight)


def test_model_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        gpt.load_checkpoint(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_text("this is not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        gpt.load_checkpoint(str(tmp_path / "junk.pt"))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a checkpoint of this project"):
        gpt.load_checkpoint(str(tmp_path / "other.pt"))


def test_model_from_pretrained_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        gpt.GPT.from_pretrained("gpt3")
    from transformers import BertConfig
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path / "bert")
    with pytest.raises(ValueError, match="not GPT-2"):
        gpt.GPT.from_pretrained(str(tmp_path / "bert"))
    hf, path = _model_hf_dir(tmp_path, **MODEL_SHAPES[0])
    model = gpt.GPT(gpt.GPTConfig(block_size=64, vocab_size=TINY_VOCAB, n_layer=2, n_head=2, n_embd=48))
    with pytest.raises(ValueError, match="shape mismatch"):
        model.load_hf_state_dict(hf.state_dict())


def test_model_byte_tokenizer_round_trip():
    enc = gpt.get_tokenizer("byte")
    text = "Héllo, 世界! 🙂"
    assert enc.decode(enc.encode_ordinary(text)) == text
    assert enc.decode(enc.encode_ordinary(text) + [enc.eot_token]) == text
    with pytest.raises(ValueError, match="unknown tokenizer"):
        gpt.get_tokenizer("sentencepiece")


def test_model_cli_samples_from_checkpoint_and_fails_cleanly(tmp_path):
    _model_tiny_checkpoint(tmp_path / "model.pt")
    cmd = [sys.executable, str(HERE / "model.py"), "--ckpt", str(tmp_path / "model.pt"), "--device", "cpu",
           "--prompt", "The ", "--num-samples", "2", "--max-new-tokens", "8"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("--- sample") == 2 and "The " in run.stdout
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    run = subprocess.run(cmd[:3] + [str(tmp_path / "bad.pt")], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert run.stderr.strip().startswith("error:") and len(run.stderr.strip().splitlines()) == 1


def test_model_generate_stops_when_every_row_hit_the_stop_token():
    torch.manual_seed(0)
    m = gpt.GPT(gpt.GPTConfig(block_size=64, vocab_size=50, n_layer=1, n_head=2, n_embd=16)).eval()
    prompt = torch.randint(0, 50, (2, 4))
    full = m.generate(prompt, 30, temperature=0)
    # Stop at the token row 0 produces 5th: row 0 hits it there, row 1 maybe later or never.
    stop = full[0, 4 + 4].item()
    out = m.generate(prompt, 30, temperature=0, stop_token=stop)
    first_hits = [(row[4:] == stop).nonzero()[0, 0].item() if (row[4:] == stop).any() else 30 for row in full]
    assert out.size(1) == 4 + min(30, max(first_hits) + 1)
    assert torch.equal(out, full[:, :out.size(1)])  # same tokens up to the stop
