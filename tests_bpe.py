from test_all import *  # noqa: F401,F403  (fixtures: offline_tiktoken (autouse), gpt2_enc)

# ---------------------------------------------------------------------------------------------
# bpe.py: exact to a slow textbook implementation, identical to tiktoken, safe save/load and CLI
# ---------------------------------------------------------------------------------------------
import os
import random
import subprocess
import sys
import warnings

import pytest
import regex

import bpe

_BPE_HERE = os.path.dirname(os.path.abspath(__file__))


def _bpe_slow_split(text, pattern):
    return regex.findall(pattern, text) if pattern else ([text] if text else [])


def _bpe_slow_merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _bpe_slow_train(text, vocab_size, pattern):
    """The textbook algorithm, recounting everything for every merge (minbpe's RegexTokenizer.train)."""
    chunks = [list(c.encode("utf-8")) for c in _bpe_slow_split(text, pattern)]
    merges = {}
    for new_id in range(256, vocab_size):
        counts = {}
        for ids in chunks:
            for pair in zip(ids, ids[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        pair = max(counts, key=counts.get)      # first of the most frequent, in text order
        merges[pair] = new_id
        chunks = [_bpe_slow_merge(ids, pair, new_id) for ids in chunks]
    return merges


def _bpe_slow_encode(text, merges, pattern):
    """Textbook encode: in each chunk, merge the lowest-id pair present until none is a merge."""
    out = []
    for chunk in _bpe_slow_split(text, pattern):
        ids = list(chunk.encode("utf-8"))
        while len(ids) >= 2:
            pair = min(set(zip(ids, ids[1:])), key=lambda p: merges.get(p, float("inf")))
            if pair not in merges:
                break
            ids = _bpe_slow_merge(ids, pair, merges[pair])
        out.extend(ids)
    return out


_BPE_ENGLISH = """\
The tokenizer turns text into a list of integers. It first splits the text into chunks with a regular
expression, so that words, numbers and punctuation never merge with each other; then it repeatedly
joins the most frequent pair of neighbouring tokens into a new token. After 1024 merges, common words
such as " the", " and" and " tokenizer" are single tokens, while rare words like "Hippopotomonstrosesquip"
still fall apart into pieces. Numbers: 3.14159, 2,718, 1e-9, 65536 and 0x1F600.
    Indented code: def f(x):\n        return x ** 2  # spaces matter!
Don't, won't, it's, we'll, they've, I'm, she'd -- contractions get their own chunks. Tabs\tand\r\nnewlines too.
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
        texts.append("".join(rng.choice(["a", "b", "ab", "ba", " ", "aa", "c", "\n\n"]) for _ in range(rng.randint(0, 40))))
    return texts


_BPE_TEXTS = [
    _BPE_ENGLISH, _BPE_CHINESE, _BPE_EMOJI, "", "a", "é", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "aaa aaaa aaaaa aaaaaaaaa b aaaa", "   \n\n\n   \t\t\t    x      y \r\n\r\n ", "1234567890 12 345 6789 99999 100000",
    "😀😀😀😀😀😀", "ab" * 40 + " " + "ba" * 40,
]


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2", None])
def test_bpe_train_matches_textbook_on_many_texts(pattern):
    pat = bpe.PATTERNS[pattern]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # tiny texts run out of pairs; that is tested separately
        for text in _BPE_TEXTS:
            for vocab_size in (256, 257, 300, 420):
                expected = _bpe_slow_train(text, vocab_size, pat)
                assert bpe.Tokenizer(pattern).train(text, vocab_size).merges == expected, (text[:40], vocab_size)
        for text in _bpe_tie_texts():
            expected = _bpe_slow_train(text, 300, pat)
            assert bpe.Tokenizer(pattern).train(text, 300).merges == expected, text


@pytest.mark.parametrize("bulk_min", [1, 3, 50])
def test_bpe_bulk_numpy_merge_matches_textbook(monkeypatch, bulk_min):
    # Merges with BULK_MIN or more places run in numpy (_apply_merge_bulk); force it on small texts.
    monkeypatch.setattr(bpe, "BULK_MIN", bulk_min)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for pattern in ("gpt4", None):
            for text in _BPE_TEXTS + _bpe_tie_texts()[::4]:
                expected = _bpe_slow_train(text, 330, bpe.PATTERNS[pattern])
                assert bpe.Tokenizer(pattern).train(text, 330).merges == expected, (pattern, text[:40])
        text = _bpe_long_text(4)
        assert bpe.Tokenizer("gpt2").train(text, 600).merges == _bpe_slow_train(text, 600, bpe.GPT2_PATTERN)


@pytest.mark.parametrize("pattern, vocab_size", [("gpt4", 900), ("gpt2", 700), (None, 500)])
def test_bpe_train_matches_textbook_large_vocab(pattern, vocab_size):
    text = _bpe_long_text(6)
    expected = _bpe_slow_train(text, vocab_size, bpe.PATTERNS[pattern])
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
    assert tok.merges == _bpe_slow_train(text, 5000, bpe.GPT4_PATTERN)
    assert 0 < len(tok.merges) < 5000 - 256
    assert len(tok.encode("hello")) == 1 and len(tok.encode(" world")) == 1
    with pytest.raises(ValueError, match="at least 256"):
        bpe.Tokenizer().train(text, 255)


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2", None])
def test_bpe_encode_matches_textbook_and_round_trips(pattern):
    train_text = _bpe_long_text(8)
    tok = bpe.Tokenizer(pattern).train(train_text, 600)
    samples = [_bpe_long_text(3), "", " ", "a" * 300, " " * 150 + "x", "\n" * 80, _BPE_EMOJI,
               "未见过的汉字：龘靐齉爩", "\x00\x01\x7f control", "🧬" * 40]
    for text in samples:
        ids = tok.encode(text)
        assert ids == _bpe_slow_encode(text, tok.merges, bpe.PATTERNS[pattern])
        assert tok.decode(ids) == text
    # The chunk cache returns the same ids the second time.
    assert tok.encode(samples[0]) == _bpe_slow_encode(samples[0], tok.merges, bpe.PATTERNS[pattern])


def test_bpe_long_chunk_encoder_equals_short_one():
    # Chunks over 64 tokens take the heap path; both must give the textbook answer.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # this short text runs out of pairs before 320
        tok = bpe.Tokenizer(None).train("abracadabra " * 20 + "aaaaaaaa bbbb", 320)
    rng = random.Random(3)
    for _ in range(30):
        text = "".join(rng.choice("abrcd ") for _ in range(rng.randint(65, 400)))
        ids = list(text.encode())
        assert bpe._encode_long_chunk(ids, tok.merges) == _bpe_slow_encode(text, tok.merges, None)


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
    assert _bpe_gpt2.encode(with_special, allowed_special="all") == gpt2_enc.encode(with_special, allowed_special="all")
    assert _bpe_gpt2.decode(gpt2_enc.encode(with_special, allowed_special="all")) == with_special
    assert gpt2_enc.encode("hello world") == _bpe_gpt2.encode("hello world") == [31373, 995]


def test_bpe_gpt2_merges_are_textbook_encode(_bpe_gpt2, gpt2_enc):
    # The recovered merges with the textbook encode (not tiktoken's rank rule) give tiktoken's ids.
    text = _bpe_long_text(4)
    unshuffle = {i: b for b, i in enumerate(_bpe_gpt2.byte_ids)}
    # Map GPT-2's ids for single bytes back to raw bytes so the slow encoder can run on plain bytes.
    raw = lambda i: unshuffle[i] if i < 256 else i          # noqa: E731
    merges = {(raw(a), raw(b)): i for (a, b), i in _bpe_gpt2.merges.items()}
    slow = [(_bpe_gpt2.byte_ids[i] if i < 256 else i) for i in _bpe_slow_encode(text, merges, _bpe_gpt2.pattern)]
    assert slow == gpt2_enc.encode_ordinary(text)


def test_bpe_special_tokens_and_allowed_special_modes():
    tok = bpe.Tokenizer("gpt4", special_tokens=["<|endoftext|>", "<|pad|>"]).train(_BPE_ENGLISH, 300)
    eot, pad = tok.special_tokens["<|endoftext|>"], tok.special_tokens["<|pad|>"]
    assert (eot, pad) == (300, 301) and tok.n_vocab == 302
    text = "hello<|endoftext|>world<|pad|>"
    assert tok.encode(text, allowed_special="all") == tok.encode_ordinary("hello") + [eot] + \
        tok.encode_ordinary("world") + [pad]
    assert tok.encode(text, allowed_special={"<|pad|>"}) == tok.encode_ordinary("hello<|endoftext|>world") + [pad]
    assert tok.encode(text, allowed_special="none") == tok.encode_ordinary(text)
    with pytest.raises(ValueError, match="special token"):
        tok.encode(text)                                  # "none_raise" is the default
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode(text, allowed_special="some")
    assert tok.decode(tok.encode(text, allowed_special="all")) == text
    tok.register_special_tokens({"<|x|>": 5000})
    assert tok.encode("a<|x|>", allowed_special="all")[-1] == 5000 and tok.decode([5000]) == "<|x|>"


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


def test_bpe_reads_minbpe_v1_file(tmp_path):
    # Exactly what minbpe's RegexTokenizer.save writes: version, pattern, #specials, specials, merges.
    path = tmp_path / "mini.model"
    path.write_text(f"minbpe v1\n{bpe.GPT4_PATTERN}\n1\n<|endoftext|> 259\n97 97\n256 97\n98 99\n", encoding="utf-8")
    tok = bpe.Tokenizer(None).load(str(path))
    assert tok.merges == {(97, 97): 256, (256, 97): 257, (98, 99): 258}
    assert tok.pattern == bpe.GPT4_PATTERN and tok.special_tokens == {"<|endoftext|>": 259}
    assert tok.vocab[257] == b"aaa" and tok.vocab[258] == b"bc"
    assert tok.encode("aaabc<|endoftext|>", allowed_special="all") == [257, 258, 259]


@pytest.mark.parametrize("content", [b"", b"minbpe v9\n\n0\n", b"minbpe v1\n\n0\n97 x\n", b"minbpe v1\n\n0\n300 97\n",
                                     b"minbpe v1\n\n2\n<a> 300\n", b"\xff\xfe garbage", b"bpe v2\n\n0\n1 2 3\n"])
def test_bpe_load_rejects_corrupt_files(tmp_path, content):
    path = tmp_path / "bad.model"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a valid tokenizer"):
        bpe.Tokenizer().load(str(path))


def _bpe_cli(*args, cwd):
    return subprocess.run([sys.executable, os.path.join(_BPE_HERE, "bpe.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_bpe_cli_trains_saves_and_reports(tmp_path):
    (tmp_path / "corpus.txt").write_text(_bpe_long_text(12), encoding="utf-8")
    r = _bpe_cli("corpus.txt", "400", "--pattern", "gpt2", "--special", "<|endoftext|>", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "round trip ok" in r.stdout and "merges/s" in r.stdout and "bytes per token" in r.stdout
    assert "longest tokens" in r.stdout
    tok = bpe.Tokenizer().load(str(tmp_path / "corpus.model"))
    assert len(tok.merges) == 144 and tok.special_tokens == {"<|endoftext|>": 400}
    assert tok.merges == _bpe_slow_train(_bpe_long_text(12), 400, bpe.GPT2_PATTERN)
    r = _bpe_cli("corpus.txt", "300", "-o", "out/small", "--pattern", "none", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "small.model").exists() and (tmp_path / "out" / "small.vocab").exists()
    r = _bpe_cli("--load", "corpus.model", "--encode", "hello world", cwd=tmp_path)
    assert r.returncode == 0 and [int(x) for x in r.stdout.split()] == tok.encode("hello world")


def test_bpe_cli_bad_inputs_get_one_line_errors(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "ok.txt").write_text("hello", encoding="utf-8")
    (tmp_path / "bad.model").write_text("minbpe v1\n\n0\n1 banana\n", encoding="utf-8")
    cases = [(("missing.txt", "300"), "no such file"), (("latin1.txt", "300"), "not UTF-8"),
             (("ok.txt", "100"), "at least 256"), (("--load", "bad.model", "--encode", "x"), "not a valid"),
             (("--load", "nothere.model", "--encode", "x"), "no such file")]
    for args, message in cases:
        r = _bpe_cli(*args, cwd=tmp_path)
        assert r.returncode != 0, args
        assert "Traceback" not in r.stderr, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (args, r.stderr)


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


def test_bpe_train_with_64_bit_nodes_matches_textbook(monkeypatch):
    # Training nodes are 32-bit unless the text is huge; force the 64-bit layout, lists and numpy both.
    monkeypatch.setattr(bpe, "INT32_MAX", 0)
    for bulk_min in (3, 300):
        monkeypatch.setattr(bpe, "BULK_MIN", bulk_min)
        text = _bpe_long_text(2)
        assert bpe.Tokenizer("gpt2").train(text, 500).merges == _bpe_slow_train(text, 500, bpe.GPT2_PATTERN)
