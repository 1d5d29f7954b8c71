"""Compare our BPE tokenizer with GPT-2's (and GPT-4's / GPT-4o's when they can be loaded), and answer the
ten classic tokenization questions with measurements instead of folklore.

    python compare_tokenizers.py                          # table + tokenizers.png on an English and a Chinese sentence
    python compare_tokenizers.py --text "..." --file notes.txt    # ...plus your own texts
    python compare_tokenizers.py --explain                # the ten questions, each with a measured demonstration
    python compare_tokenizers.py --explain 8              # just question 8

"Ours" is manual.model, what `python bpe.py manual.txt 1024` writes. If that file is missing it is trained
here (same corpus, same vocabulary size) and saved, so the script works on a fresh checkout.
GPT-2's tokenizer comes from tiktoken, which downloads its files once; offline, point TIKTOKEN_CACHE_DIR
at a filled cache (see test_all.py). cl100k_base and o200k_base are shown only when tiktoken can load them.
"""
import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import bpe

SAMPLES = {
    "English": "Hello, world! A tokenizer turns text into the integers that a language model reads.",
    "Chinese": "你好，世界！分词器把文本变成语言模型能读懂的整数。",
}
OTHER_ENCODINGS = ("cl100k_base", "o200k_base")  # GPT-4's and GPT-4o's tokenizers, shown when tiktoken has them
GPT2_N_EMBD = 768  # width of GPT-2 small: every vocabulary entry costs one row of this many parameters

# -----------------------------------------------------------------------------
# The contenders: each is a name, a text -> ids function, and an id -> bytes function (to show the pieces)


@dataclass
class Contender:
    name: str
    encode: Callable[[str], list]
    token_bytes: Callable[[int], bytes]


def from_tiktoken(enc):
    # encode_ordinary: a "<|endoftext|>" inside a user's text is plain text here, not a control token
    return Contender(enc.name, enc.encode_ordinary, enc.decode_single_token_bytes)


def from_ours(tok, name="ours"):
    return Contender(name, tok.encode_ordinary, lambda i: tok.vocab[i])


def load_tiktoken(name):
    """(encoding, None) when tiktoken can load `name`, else (None, a one-line reason)."""
    import tiktoken
    try:
        return tiktoken.get_encoding(name), None
    except Exception as e:  # offline: requests' ConnectionError, or a wrong hash, or an unknown name
        return None, f"{name} could not be loaded ({type(e).__name__}; offline?)"


def load_or_train_ours(model_path, corpus_path, vocab_size):
    """Load our tokenizer from `model_path`; if the file is missing, train it on the corpus and save it there."""
    if not model_path.endswith(".model"):
        raise ValueError(f"the model path must end in .model (got {model_path!r})")
    tok = bpe.Tokenizer()
    if os.path.exists(model_path):
        tok.load(model_path)
        return tok
    if not os.path.isfile(corpus_path):
        raise FileNotFoundError(f"{model_path} does not exist and {corpus_path}, the text to train it on, is missing "
                                f"too (pass --corpus, or train one with: python bpe.py TEXT 1024)")
    text = bpe.read_text(corpus_path)
    print(f"{model_path} not found: training it on {corpus_path} to vocab size {vocab_size} ...")
    tok.train(text, vocab_size, progress=True)
    tok.save(model_path[: -len(".model")])
    return tok


# -----------------------------------------------------------------------------
# Measuring: tokens, bytes per token, characters per token


def show_pieces(contender, ids, limit=60):
    """'|Hello|,| world|': each token's bytes; bytes that are only part of a UTF-8 character show as \\xNN."""
    def show(i):
        s = contender.token_bytes(i).decode("utf-8", errors="backslashreplace")
        return s.replace("\n", "\\n").replace("\t", "\\t")
    pieces = "|".join(show(i) for i in ids[:limit])
    more = f" ... (+{len(ids) - limit} more)" if len(ids) > limit else ""
    return f"|{pieces}|{more}"


def measure(contender, label, text):
    ids = contender.encode(text)
    n_bytes, n_chars = len(text.encode("utf-8")), len(text)
    return dict(tokenizer=contender.name, text=label, chars=n_chars, bytes=n_bytes, tokens=len(ids), ids=ids,
                bytes_per_token=n_bytes / max(len(ids), 1), chars_per_token=n_chars / max(len(ids), 1),
                pieces=show_pieces(contender, ids))


def markdown_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def comparison_table(rows):
    headers = ["text", "tokenizer", "chars", "bytes", "tokens", "bytes/token", "chars/token"]
    return markdown_table(headers, [[r["text"], r["tokenizer"], r["chars"], r["bytes"], r["tokens"],
                                     f"{r['bytes_per_token']:.2f}", f"{r['chars_per_token']:.2f}"] for r in rows])


def plot_comparison(rows, path):
    """Grouped bars: tokens per text, and characters per token, one bar per tokenizer. Written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    texts = list(dict.fromkeys(r["text"] for r in rows))
    names = list(dict.fromkeys(r["tokenizer"] for r in rows))
    by_key = {(r["text"], r["tokenizer"]): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(names)
    for ax, key, title in ((axes[0], "tokens", "tokens (fewer is better)"),
                           (axes[1], "chars_per_token", "characters per token (more is better)")):
        for j, name in enumerate(names):
            xs = [i + j * width for i, t in enumerate(texts) if (t, name) in by_key]
            ys = [by_key[t, name][key] for t in texts if (t, name) in by_key]
            ax.bar(xs, ys, width, label=name)
        ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(texts))], texts)
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    tmp = path + ".tmp"
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)

# -----------------------------------------------------------------------------
# --explain: the ten questions. Each function measures, and returns the words and numbers it printed.


@dataclass
class Context:
    gpt2: object             # tiktoken Encoding "gpt2"
    ours: object             # bpe.Tokenizer
    corpus: str              # the text ours was trained on (question 2 retrains on it)
    sizes: list              # vocabulary sizes for question 2
    others: dict = field(default_factory=dict)  # name -> tiktoken Encoding, whichever could be loaded


@dataclass
class Answer:
    title: str
    why: str                 # the explanation, in a few sentences
    lines: list              # the printed measurement
    facts: dict              # the key numbers, so tests can recompute them independently


def n_tokens(enc_or_tok, text):
    return len(enc_or_tok.encode_ordinary(text))


def gpt2_pieces(ctx, text):
    return show_pieces(from_tiktoken(ctx.gpt2), ctx.gpt2.encode_ordinary(text))


def ours_pieces(ctx, text):
    return show_pieces(from_ours(ctx.ours), ctx.ours.encode_ordinary(text))


def q1_code_points(ctx):
    chars = ["A", "é", "中", "😀"]
    lines, facts = [], {}
    for ch in chars:
        cp = ord(ch)
        utf8 = ch.encode("utf-8")
        assert chr(cp) == ch
        facts[ch] = dict(code_point=cp, utf8=utf8, gpt2_tokens=n_tokens(ctx.gpt2, ch), ours_tokens=n_tokens(ctx.ours, ch))
        lines.append(f"{ch!r}: ord -> {cp} (U+{cp:04X}), chr({cp}) -> {chr(cp)!r}, UTF-8 bytes "
                     f"{utf8.hex(' ')}, GPT-2 tokens {facts[ch]['gpt2_tokens']}, ours {facts[ch]['ours_tokens']}")
    word = "hi 中文"
    points = [ord(c) for c in word]
    lines.append(f"{word!r} -> {points} -> {''.join(chr(p) for p in points)!r}")
    return Answer(
        "How do I see a character's Unicode code point, and go back?",
        "A Python string is a sequence of Unicode code points: ord(c) gives the integer, chr(n) turns it back. "
        "Tokenizers do not use code points directly (there are ~150,000 of them and more each year); byte-level BPE "
        "starts from the UTF-8 bytes, 1 to 4 per character, and merges frequent byte pairs.",
        lines, facts)


def q2_vocab_size(ctx):
    rows, facts = [], {}
    for size in ctx.sizes:
        tok = bpe.Tokenizer()
        tok.train(ctx.corpus, size)
        vocab = len(tok.vocab)
        counts = {label: n_tokens(tok, text) for label, text in SAMPLES.items()}
        corpus_tokens = n_tokens(tok, ctx.corpus)
        facts[size] = dict(vocab=vocab, corpus_tokens=corpus_tokens, **counts)
        rows.append([f"ours {size}", vocab, *counts.values(), corpus_tokens,
                     f"{len(ctx.corpus.encode()) / max(corpus_tokens, 1):.2f}", f"{vocab * GPT2_N_EMBD:,}"])
    counts = [n_tokens(ctx.gpt2, text) for text in SAMPLES.values()]
    corpus_tokens = n_tokens(ctx.gpt2, ctx.corpus)
    rows.append(["GPT-2", ctx.gpt2.n_vocab, *counts, corpus_tokens,
                 f"{len(ctx.corpus.encode()) / max(corpus_tokens, 1):.2f}", f"{ctx.gpt2.n_vocab * GPT2_N_EMBD:,}"])
    headers = ["tokenizer", "vocab", *(f"{label} tokens" for label in SAMPLES), "corpus tokens", "corpus bytes/token",
               f"embedding params (vocab x {GPT2_N_EMBD})"]
    return Answer(
        "What are the pros and cons of a large vs a small vocabulary?",
        "A larger vocabulary packs more text into each token, so sequences are shorter: more text fits in the "
        "context and each character costs less compute. The price is a bigger embedding table and output layer "
        "(one row of n_embd numbers per token, and a softmax over all of them), and rarer tokens that get few "
        "training updates. A tiny vocabulary makes long sequences that waste attention on single letters.",
        markdown_table(headers, rows).splitlines(), facts)


def q3_reverse(ctx):
    word = "lollipop"
    variants = {"word": word, "reversed": word[::-1], "spaced letters": " ".join(word)}
    lines, facts = [], {}
    for label, text in variants.items():
        facts[label] = dict(gpt2=n_tokens(ctx.gpt2, text), ours=n_tokens(ctx.ours, text))
        lines.append(f"{label:>14} {text!r}: GPT-2 {facts[label]['gpt2']} tokens {gpt2_pieces(ctx, text)}, "
                     f"ours {facts[label]['ours']} {ours_pieces(ctx, text)}")
    flipped = ctx.gpt2.decode(ctx.gpt2.encode_ordinary(word)[::-1])
    facts["tokens reversed"] = flipped
    lines.append(f"reversing GPT-2's tokens of {word!r} instead of its letters gives {flipped!r}, not {word[::-1]!r}")
    return Answer(
        "Why do LLMs struggle to reverse a string?",
        "The model never sees letters, only ids of multi-letter chunks; to reverse a word it must recall how each "
        "chunk is spelled, which it learns only indirectly. The reversed word is made of rare chunks that split "
        "differently, and reversing the chunk order is not reversing the letters. Writing the letters apart first "
        "(one token per letter) makes the task easy.",
        lines, facts)


LANGUAGES = {
    "English": "The weather is nice today, so let's take a walk in the park.",
    "Chinese": "今天天气很好，我们去公园散步吧。",
    "Japanese": "今日は天気がいいので、公園を散歩しましょう。",
}


def q4_non_english(ctx):
    encoders = {"GPT-2": ctx.gpt2, "ours": ctx.ours, **ctx.others}
    rows, facts = [], {}
    for lang, text in LANGUAGES.items():
        counts = {name: n_tokens(enc, text) for name, enc in encoders.items()}
        facts[lang] = dict(chars=len(text), bytes=len(text.encode()), **counts)
        rows.append([lang, len(text), len(text.encode()),
                     *(f"{c} ({c / len(text):.2f}/char)" for c in counts.values())])
    lines = markdown_table(["language", "chars", "UTF-8 bytes", *(f"{n} tokens" for n in encoders)], rows).splitlines()
    lines.append("Chinese, GPT-2: " + gpt2_pieces(ctx, LANGUAGES["Chinese"]))
    return Answer(
        "Why do LLMs do worse on non-English text such as Japanese or Chinese?",
        "GPT-2's merges were learned on mostly English web text, so English words are single tokens while a Chinese "
        "or Japanese character (3 UTF-8 bytes) often stays 2-3 byte tokens. The same meaning then costs about "
        "twice the tokens: less fits in the context, and each token carries less meaning for the model to learn from. "
        "A tokenizer trained on text with Chinese in it (ours, when trained on the bilingual manual) narrows the gap.",
        lines, facts)


def digit_split(contender, number):
    """'1234' -> '2+2' when the tokenizer cuts it into '12' and '34'."""
    return "+".join(str(len(contender.token_bytes(i))) for i in contender.encode(number))


def q5_arithmetic(ctx):
    examples = ["127", "1234", "12345", "2024", "677 + 234 = 911", "3.14159"]
    lines = [f"{s!r}: GPT-2 {gpt2_pieces(ctx, s)}, ours {ours_pieces(ctx, s)}" for s in examples]
    numbers = [str(n) for n in range(1000, 10000)]
    facts = {}
    for c in (from_tiktoken(ctx.gpt2), from_ours(ctx.ours)):
        splits = Counter(digit_split(c, s) for s in numbers)
        facts[c.name] = dict(splits.most_common())
        shown = ", ".join(f"{split}: {count}" for split, count in splits.most_common())
        lines.append(f"{c.name}, how the 9000 numbers 1000..9999 split (digits per token): {shown}")
    return Answer(
        "Why do LLMs struggle with simple arithmetic?",
        "Numbers are cut into whatever digit chunks happened to be frequent in the tokenizer's training text, so "
        "digits do not line up: one four-digit number is a single token, the next splits 2+2, another 1+3 or 3+1. "
        "Adding column by column needs digit positions the model cannot see directly. GPT-4's split pattern at "
        "least cuts digit runs into groups of at most three, left to right, before BPE runs.",
        lines, facts)


PY_SNIPPET = '''class Counter:
    def __init__(self):
        self.counts = {}

    def add(self, word):
        if word in self.counts:
            self.counts[word] += 1
        else:
            self.counts[word] = 1
        return self.counts[word]
'''


def code_trained_tokenizer(vocab_size=512):
    """A GPT-4-pattern BPE trained on Python source (this very file): a stand-in for cl100k_base offline."""
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    tok = bpe.Tokenizer(pattern="gpt4")
    tok.train(source, vocab_size)
    return tok


def q6_python(ctx):
    encoders = {"GPT-2": from_tiktoken(ctx.gpt2)}
    if "cl100k_base" in ctx.others:
        encoders["cl100k_base"] = from_tiktoken(ctx.others["cl100k_base"])
    else:
        encoders["ours, trained on Python"] = from_ours(code_trained_tokenizer(), "ours, trained on Python")
    lines, facts = [], {}
    for name, c in encoders.items():
        ids = c.encode(PY_SNIPPET)
        spaces = sum(1 for i in ids if c.token_bytes(i).strip() == b"")
        facts[name] = dict(tokens=len(ids), whitespace_tokens=spaces)
        lines.append(f"{name}: {len(ids)} tokens for the snippet below, {spaces} of them only whitespace")
    line = "            self.counts[word] += 1"
    for name, c in encoders.items():
        lines.append(f"{line!r}, {name}: {show_pieces(c, c.encode(line))}")
    if "cl100k_base" not in ctx.others:
        lines.append("(cl100k_base is not loaded here, so a GPT-4-pattern BPE trained at vocab 512 on this script's "
                     "own source stands in for a tokenizer that has seen code)")
    return Answer(
        "Why did GPT-2 have trouble with Python?",
        "GPT-2's vocabulary has no merges for runs of spaces, so every space of indentation is its own token (id 220): "
        "indented code burns the context on spaces, and the model must count them to get the nesting right. A "
        "tokenizer trained with plenty of code (GPT-4's cl100k_base) has tokens for whole indentation runs, so the "
        "same code costs far fewer tokens.",
        lines, facts)


def q7_endoftext(ctx):
    text = "<|endoftext|>"
    allowed = ctx.gpt2.encode(text, allowed_special="all")
    try:
        ctx.gpt2.encode(text)
        refused = "no error"
    except ValueError as e:
        refused = "ValueError: " + str(e).splitlines()[0][:80]
    ordinary = ctx.gpt2.encode_ordinary(text)
    facts = dict(allowed=allowed, ordinary=ordinary, eot_token=ctx.gpt2.eot_token, refused=refused)
    lines = [f"encode({text!r}, allowed_special='all') -> {allowed} (eot_token = {ctx.gpt2.eot_token})",
             f"encode({text!r}) by default -> {refused}",
             f"encode_ordinary({text!r}) -> {len(ordinary)} ordinary tokens {gpt2_pieces(ctx, text)}",
             f"ours (no special tokens registered) -> {n_tokens(ctx.ours, text)} ordinary tokens {ours_pieces(ctx, text)}"]
    return Answer(
        "Why does a model stop when it meets the string <|endoftext|>?",
        "In training, every document ends with one special token, id 50256, so the model learns to predict it when "
        "a text is finished and the sampling loop stops there. The string itself is only special if the tokenizer "
        "is told to parse it: tiktoken refuses it in user text by default, so nobody can inject the control token; "
        "a chat front end that does parse it makes the model stop (or act strangely) mid-answer.",
        lines, facts)


def q8_solidgoldmagikarp(ctx):
    facts, lines = {}, []
    for text in (" SolidGoldMagikarp", "SolidGoldMagikarp", " petertodd"):
        ids = ctx.gpt2.encode_ordinary(text)
        facts[text] = ids
        lines.append(f"GPT-2 {text!r} -> {len(ids)} token{'s' * (len(ids) > 1)} {ids} {gpt2_pieces(ctx, text)}")
    ours = n_tokens(ctx.ours, " SolidGoldMagikarp")
    facts["ours"] = ours
    lines.append(f"ours ' SolidGoldMagikarp' -> {ours} tokens {ours_pieces(ctx, ' SolidGoldMagikarp')}")
    return Answer(
        'Why did " SolidGoldMagikarp" break models?',
        "The tokenizer was trained on text where this Reddit user name was frequent, so it became one token; the "
        "language model's training data barely contained it, so that token's embedding row was almost never "
        "updated and stayed near its random start. Feeding the model an untrained vector pushes it off every path "
        "it learned, hence the bizarre outputs.",
        lines, facts)


DATA = {
    "model": "gpt2",
    "sizes": [
        {"name": "small", "layers": 12, "heads": 12, "n_embd": 768, "params_millions": 124},
        {"name": "medium", "layers": 24, "heads": 16, "n_embd": 1024, "params_millions": 350},
        {"name": "large", "layers": 36, "heads": 20, "n_embd": 1280, "params_millions": 774},
        {"name": "xl", "layers": 48, "heads": 25, "n_embd": 1600, "params_millions": 1558},
    ],
    "tokenizer": {"type": "byte-level BPE", "vocab_size": 50257, "context": 1024, "end_of_text": 50256},
}


def q9_yaml_json(ctx):
    import yaml  # PyYAML: installed with transformers
    formats = {"JSON (indent=2)": json.dumps(DATA, indent=2), "JSON (compact)": json.dumps(DATA),
               "YAML": yaml.safe_dump(DATA, sort_keys=False)}
    rows, facts = [], {}
    for name, text in formats.items():
        facts[name] = dict(gpt2=n_tokens(ctx.gpt2, text), ours=n_tokens(ctx.ours, text), chars=len(text))
        rows.append([name, len(text), facts[name]["gpt2"], facts[name]["ours"]])
    lines = markdown_table(["format", "chars", "GPT-2 tokens", "ours tokens"], rows).splitlines()
    lines.append(f"YAML, GPT-2: {gpt2_pieces(ctx, formats['YAML'])}")
    return Answer(
        "Why is YAML cheaper than JSON for LLMs?",
        "The same data in JSON spends tokens on quotes, braces, brackets and commas; YAML says the same with "
        "indentation and newlines. Fewer tokens mean lower cost per call and more room in the context window. "
        "Pretty-printed JSON is the worst case for GPT-2, whose every indentation space is a token (question 6).",
        lines, facts)


def q10_not_end_to_end(ctx):
    words = ["hello", " hello", "Hello", " Hello", "HELLO", "hello "]
    facts = {w: dict(gpt2=ctx.gpt2.encode_ordinary(w), ours=ctx.ours.encode_ordinary(w)) for w in words}
    lines = [f"{w!r:>10}: GPT-2 {facts[w]['gpt2']}  ours {facts[w]['ours']}" for w in words]
    for prompt in ("Here is a", "Here is a "):
        lines.append(f"{prompt!r}: GPT-2 {gpt2_pieces(ctx, prompt)}")
    return Answer(
        "Why is an LLM not truly end-to-end language modeling?",
        "The tokenizer is a separate stage, trained on its own data with its own algorithm and frozen before the "
        "network sees anything; gradients never reach it. So the network must learn from scratch that 'hello', "
        "' hello' and 'Hello' (unrelated ids) mean the same, and a prompt ending in a space hands it a lone ' ' "
        "token it rarely saw in training. Many quirks above (spelling, arithmetic, SolidGoldMagikarp) come from this stage.",
        lines, facts)


QUESTIONS = [q1_code_points, q2_vocab_size, q3_reverse, q4_non_english, q5_arithmetic,
             q6_python, q7_endoftext, q8_solidgoldmagikarp, q9_yaml_json, q10_not_end_to_end]


def print_answer(number, answer):
    print(f"\n=== {number}/10. {answer.title} ===")
    print(answer.why)
    for line in answer.lines:
        print("  " + line)

# -----------------------------------------------------------------------------
# The command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="manual.model", help="our tokenizer (trained from --corpus if missing)")
    p.add_argument("--corpus", default="manual.txt", help="training text for --model and for --explain 2")
    p.add_argument("--vocab-size", type=int, default=1024, help="vocabulary size when --model must be trained")
    p.add_argument("--text", action="append", default=[], help="another text to compare (repeatable)")
    p.add_argument("--file", action="append", default=[], help="a UTF-8 file to compare (repeatable)")
    p.add_argument("--plot", default="tokenizers.png", help="bar chart PNG ('' for none)")
    p.add_argument("--explain", type=int, nargs="?", const=0, metavar="N",
                   help="answer the ten tokenization questions (or just question N)")
    p.add_argument("--others", default=",".join(OTHER_ENCODINGS),
                   help="more tiktoken encodings to compare, comma-separated ('' for none; offline they are skipped)")
    p.add_argument("--sizes", default="300,512,1024,2048", help="vocabulary sizes for --explain 2")
    return p.parse_args(argv)


def check_inputs(args):
    """Validate every flag and read every text before anything slow happens. Returns (texts, sizes)."""
    if args.explain is not None and not 0 <= args.explain <= len(QUESTIONS):
        raise ValueError(f"--explain takes a question number 1..{len(QUESTIONS)}, got {args.explain}")
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        raise ValueError(f"--sizes must be comma-separated integers, got {args.sizes!r}") from None
    if min(sizes + [args.vocab_size]) < 256:
        raise ValueError("--sizes and --vocab-size must be at least 256 (the single bytes)")
    texts = dict(SAMPLES)
    for i, text in enumerate(args.text, 1):
        texts[f"text {i}"] = text
    for path in args.file:
        label = os.path.basename(path) if os.path.basename(path) not in texts else path
        texts[label] = bpe.read_text(path)
    for label, text in texts.items():
        if not text:
            raise ValueError(f"{label} is empty: there is nothing to tokenize")
    if args.plot and not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
        raise FileNotFoundError(f"cannot write {args.plot}: its folder does not exist")
    return texts, sizes


def run(args):
    texts, sizes = check_inputs(args)
    ours = load_or_train_ours(args.model, args.corpus, args.vocab_size)
    gpt2, gpt2_missing = load_tiktoken("gpt2")
    others = {}
    for name in filter(None, args.others.split(",")):
        enc, reason = load_tiktoken(name)
        if enc is not None:
            others[name] = enc
        else:
            print(f"note: {reason}, skipped")
    if args.explain is not None:
        if gpt2 is None:
            raise ValueError(f"--explain needs GPT-2's tokenizer: {gpt2_missing}; set TIKTOKEN_CACHE_DIR to a filled cache")
        corpus = bpe.read_text(args.corpus) if args.explain in (0, 2) else ""
        explain(Context(gpt2=gpt2, ours=ours, corpus=corpus, sizes=sizes, others=others), args.explain)
        return
    contenders = [from_ours(ours, f"ours ({os.path.basename(args.model)}, {len(ours.vocab)})")]
    if gpt2 is not None:
        contenders.append(from_tiktoken(gpt2))
    else:
        print(f"note: {gpt2_missing}, skipped")
    contenders += [from_tiktoken(enc) for enc in others.values()]
    compare(contenders, texts, args.plot)


def explain(ctx, which):
    for number, question in enumerate(QUESTIONS, 1):
        if which in (0, number):
            print_answer(number, question(ctx))


def compare(contenders, texts, plot_path):
    rows = [measure(c, label, text) for label, text in texts.items() for c in contenders]
    print(comparison_table(rows))
    print()
    for r in rows:
        print(f"{r['text']}, {r['tokenizer']}: {r['pieces']}")
    if plot_path:
        plot_comparison(rows, plot_path)
        print(f"\nwrote {plot_path}")


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
