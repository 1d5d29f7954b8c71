from test_all import *  # noqa: F401,F403  (fixtures: offline_tiktoken (autouse), gpt2_enc)
# Tests of compare_tokenizers.py: the numbers it prints are recomputed here from tiktoken and bpe directly.
import json
import pathlib
import re
import subprocess
import sys

import pytest

import bpe
import compare_tokenizers as ct

_COMPARE_DIR = pathlib.Path(__file__).resolve().parent
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
    corpus.write_text("\n".join(f"{i}. {s}" for i in range(12) for s in _COMPARE_SENTENCES) + "\n", encoding="utf-8")
    tok = bpe.Tokenizer()
    tok.train(corpus.read_text(encoding="utf-8"), 300)
    tok.save(str(d / "ours"))
    return dict(dir=d, corpus=corpus, model=d / "ours.model")


def _compare_ours(compare_files):
    return bpe.Tokenizer().load(str(compare_files["model"]))


def _compare_context(compare_files, gpt2_enc, sizes=(260, 300)):
    return ct.Context(gpt2=gpt2_enc, ours=_compare_ours(compare_files),
                      corpus=compare_files["corpus"].read_text(encoding="utf-8"), sizes=list(sizes), others={})


def _compare_argv(compare_files, *extra):
    return ["--model", str(compare_files["model"]), "--corpus", str(compare_files["corpus"]), "--others", "", *extra]


def _compare_table(stdout):
    """{(text, tokenizer): [chars, bytes, tokens, bytes/token, chars/token]} from the printed markdown table."""
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
    assert len(pieces) == len(gpt2_enc.encode(ct.SAMPLES["English"])) and "".join(pieces) == ct.SAMPLES["English"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert not (compare_files["dir"] / "chart.png.tmp").exists()


def test_compare_measure_and_pieces(gpt2_enc):
    text = "héllo 世界"  # 8 characters, 1+2+1+1+1+1+3+3 = 13 UTF-8 bytes
    r = ct.measure(ct.from_tiktoken(gpt2_enc), "t", text)
    ids = gpt2_enc.encode(text)
    assert (r["chars"], r["bytes"], r["tokens"], r["ids"]) == (8, 13, len(ids), ids)
    assert r["bytes_per_token"] == 13 / len(ids) and r["chars_per_token"] == 8 / len(ids)
    assert ct.show_pieces(ct.from_tiktoken(gpt2_enc), gpt2_enc.encode("Hello, world")) == "|Hello|,| world|"
    # A piece that is only part of a UTF-8 character shows its bytes: GPT-2 splits 世 (e4 b8 96).
    assert ct.show_pieces(ct.from_tiktoken(gpt2_enc), gpt2_enc.encode("世")) == "|\\xe4\\xb8|\\x96|"


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


def test_compare_explain_cli_prints_all_ten_with_real_numbers(compare_files, gpt2_enc, tmp_path):
    cmd = [sys.executable, str(_COMPARE_DIR / "compare_tokenizers.py"), "--explain", "--sizes", "260,300",
           *_compare_argv(compare_files)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
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
            for m in re.finditer(r"^\s*\| (JSON \(indent=2\)|JSON \(compact\)|YAML) \| \d+ \| (\d+) \| (\d+) \|$", out, re.M)}
    ours = _compare_ours(compare_files)
    for name, text in (("JSON (indent=2)", json.dumps(ct.DATA, indent=2)), ("JSON (compact)", json.dumps(ct.DATA)),
                       ("YAML", yaml.safe_dump(ct.DATA, sort_keys=False))):
        assert rows[name] == (len(gpt2_enc.encode(text)), len(ours.encode(text)))
    assert rows["JSON (indent=2)"][0] > rows["YAML"][0]
    # (2) the vocabulary-size table: our tokenizer retrained at 300 tokenizes the corpus into this many tokens.
    corpus = compare_files["corpus"].read_text(encoding="utf-8")
    at300 = len(bpe.Tokenizer().train(corpus, 300).encode(corpus))
    assert re.search(rf"^\s*\| ours 300 \| 300 \| \d+ \| \d+ \| {at300} \|", out, re.M)


def test_compare_explain_facts_match_independent_counts(compare_files, gpt2_enc):
    ctx = _compare_context(compare_files, gpt2_enc)
    ours = ctx.ours
    # (1) code points and UTF-8 bytes are the Unicode standard's.
    q1 = ct.q1_code_points(ctx).facts
    assert q1["中"]["code_point"] == 0x4E2D and q1["中"]["utf8"] == b"\xe4\xb8\xad"
    assert q1["😀"]["gpt2_tokens"] == len(gpt2_enc.encode("😀")) and q1["😀"]["ours_tokens"] == len(ours.encode("😀"))
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
    spaces = sum(1 for i in gpt2_enc.encode(ct.PY_SNIPPET) if gpt2_enc.decode_single_token_bytes(i).strip() == b"")
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
    assert q8[" SolidGoldMagikarp"] == gpt2_enc.encode(" SolidGoldMagikarp") and len(q8[" SolidGoldMagikarp"]) == 1
    assert q8["ours"] == len(ours.encode(" SolidGoldMagikarp")) > 1
    # (10) the same word with a space or a capital gets unrelated GPT-2 ids; a trailing space is a token of its own.
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
    assert set(q6) == {"GPT-2", "cl100k_base"} and q6["cl100k_base"]["tokens"] == len(other.encode(ct.PY_SNIPPET))


@pytest.mark.parametrize("case", ["missing_file", "corrupt_model", "no_model_no_corpus", "bad_question",
                                  "empty_text", "bad_sizes", "plot_folder_missing"])
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
        "plot_folder_missing": _compare_argv(compare_files, "--plot", str(d / "no" / "such" / "dir.png")),
    }[case]
    with pytest.raises(SystemExit) as e:
        ct.main(argv)
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "\n" not in msg
    assert {"missing_file": "nope.txt", "corrupt_model": "corrupt.model", "no_model_no_corpus": "absent.txt",
            "bad_question": "1..10", "empty_text": "empty", "bad_sizes": "at least 256",
            "plot_folder_missing": "dir.png"}[case] in msg


def test_compare_cli_unreadable_model_no_traceback(compare_files, tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"\xff\xfe not a model")
    proc = subprocess.run([sys.executable, str(_COMPARE_DIR / "compare_tokenizers.py"), "--model", str(bad),
                           "--others", ""], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ") and "bad.model" in proc.stderr
