"""Compare our BPE tokenizer with GPT-2's (and GPT-4's / GPT-4o's when tiktoken can load them), and answer
ten classic tokenization questions with measurements instead of folklore.

    python compare_tokenizers.py                   # table + tokenizers.png: an English and a Chinese sentence
    python compare_tokenizers.py --text "..." --file notes.txt       # ...plus your own texts
    python compare_tokenizers.py --explain [8]     # the ten questions (or just the 8th), each measured

"Ours" is manual.model (`python bpe.py manual.txt 1024`), trained here if missing. GPT-2's is tiktoken's.
"""
import argparse
import json
import os
import sys
from collections import Counter, namedtuple
from dataclasses import dataclass

import bpe

SAMPLES = {"English": "Hello, world! A tokenizer turns text into the integers that a language model reads.",
           "Chinese": "你好，世界！分词器把文本变成语言模型能读懂的整数。"}
GPT2_N_EMBD = 768  # width of GPT-2 small: every vocabulary entry costs one row of this many parameters
LANGUAGES = {"English": "The weather is nice today, so let's take a walk in the park.",
             "Chinese": "今天天气很好，我们去公园散步吧。", "Japanese": "今日は天気がいいので、公園を散歩しましょう。"}
PY_SNIPPET = '''class Counter:
    def add(self, word):
        if word in self.counts:
            self.counts[word] += 1
        else:
            self.counts[word] = 1
        return self.counts[word]
'''
DATA = {"model": "gpt2",
        "sizes": [{"name": "small", "layers": 12, "heads": 12, "n_embd": 768, "params_millions": 124},
                  {"name": "medium", "layers": 24, "heads": 16, "n_embd": 1024, "params_millions": 350},
                  {"name": "xl", "layers": 48, "heads": 25, "n_embd": 1600, "params_millions": 1558}],
        "tokenizer": {"type": "byte-level BPE", "vocab_size": 50257, "context": 1024, "end_of_text": 50256}}


# --- The contenders: tiktoken Encodings and bpe.Tokenizers (same encode_ordinary, decode_single_token_bytes)
def load_tiktoken(name):
    """tiktoken's encoding `name`, or None after a one-line note."""
    import tiktoken
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # offline: requests' ConnectionError, or a wrong hash, or an unknown name
        print(f"note: {name} could not be loaded ({type(e).__name__}; offline?), skipped")


def load_or_train_ours(model_path, corpus_path, vocab_size):
    """Our tokenizer from `model_path`; if that file is missing, trained on the corpus and saved there."""
    if os.path.exists(model_path) or not model_path.endswith(".model"):
        return bpe.Tokenizer().load(model_path)  # which refuses a path that is not a .model file
    if not os.path.isfile(corpus_path):
        raise FileNotFoundError(f"{model_path} does not exist and {corpus_path}, the text to train it on, is "
                                f"missing too (pass --corpus, or train one with: python bpe.py TEXT 1024)")
    prefix = model_path[: -len(".model")]
    for path in (model_path, prefix + ".vocab"):
        bpe.check_output(path, [corpus_path])
    text = bpe.read_text(corpus_path)
    print(f"{model_path} not found: training it on {corpus_path} to vocab size {vocab_size} ...")
    tok = bpe.Tokenizer().train(text, vocab_size, progress=True)
    tok.save(prefix)
    return tok


# --- Measuring: tokens, bytes per token, characters per token
def pieces(enc, ids, limit=60):
    """'|Hello|,| world|': each token's bytes (of ids or a text's); part of a character shows as \\xNN."""
    ids = enc.encode_ordinary(ids) if isinstance(ids, str) else ids
    shown = "|".join(enc.decode_single_token_bytes(i).decode("utf-8", errors="backslashreplace")
                     .replace("\n", "\\n").replace("\t", "\\t") for i in ids[:limit])
    return f"|{shown}|" + (f" ... (+{len(ids) - limit} more)" if len(ids) > limit else "")


def measure(name, enc, label, text):
    ids, n_bytes = enc.encode_ordinary(text), len(text.encode("utf-8"))
    return dict(tokenizer=name, text=label, chars=len(text), bytes=n_bytes, tokens=len(ids), ids=ids,
                bytes_per_token=n_bytes / max(len(ids), 1), chars_per_token=len(text) / max(len(ids), 1),
                pieces=pieces(enc, ids))


def markdown_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def plot_comparison(rows, path):
    """Grouped bars: tokens per text, and characters per token, one bar per tokenizer. Written atomically."""
    from matplotlib.figure import Figure  # no pyplot: no backend to choose, no global figure to close
    texts, names = (list(dict.fromkeys(r[key] for r in rows)) for key in ("text", "tokenizer"))
    by_key, width = {(r["text"], r["tokenizer"]): r for r in rows}, 0.8 / len(names)
    xs = range(len(texts))
    fig = Figure(figsize=(11, 4), layout="tight")
    axes = fig.subplots(1, 2)
    for ax, key, title in zip(axes, ("tokens", "chars_per_token"),
                              ("tokens (fewer is better)", "characters per token (more is better)")):
        for j, name in enumerate(names):
            ax.bar([i + j * width for i in xs], [by_key[t, name][key] for t in texts], width, label=name)
        ax.set(title=title, xticks=[i + width * (len(names) - 1) / 2 for i in xs], xticklabels=texts)
    axes[0].legend()
    fig.savefig(path + ".tmp", format="png", dpi=100)
    os.replace(path + ".tmp", path)


# --- --explain: the ten questions. Each one's docstring is its title and explanation; it measures.
@dataclass
class Context:
    gpt2: object             # tiktoken Encoding "gpt2"
    ours: object             # bpe.Tokenizer
    corpus: str              # the text ours was trained on (question 2 retrains on it)
    sizes: list              # vocabulary sizes for question 2
    others: dict             # name -> tiktoken Encoding, whichever could be loaded


Answer = namedtuple("Answer", "lines facts")   # the printed measurement; its key numbers, for tests to check


def n_tokens(enc_or_tok, text):
    return len(enc_or_tok.encode_ordinary(text))


def q1_code_points(ctx):
    """How do I see a character's Unicode code point, and go back?
    A Python string is a sequence of Unicode code points: ord(c) gives the integer, chr(n) turns it back.
    Tokenizers do not use code points directly (there are ~150,000 of them); byte-level BPE starts from
    the UTF-8 bytes, 1 to 4 per character, and merges frequent byte pairs."""
    lines, facts = [], {}
    for ch in "Aé中😀":
        cp, utf8 = ord(ch), ch.encode("utf-8")
        gpt2, ours = n_tokens(ctx.gpt2, ch), n_tokens(ctx.ours, ch)
        facts[ch] = dict(code_point=cp, utf8=utf8, gpt2_tokens=gpt2, ours_tokens=ours)
        lines.append(f"{ch!r}: ord -> {cp} (U+{cp:04X}), chr({cp}) -> {chr(cp)!r}, UTF-8 {utf8.hex(' ')}, "
                     f"GPT-2 tokens {gpt2}, ours {ours}")
    points = [ord(c) for c in "hi 中文"]
    lines.append(f"'hi 中文' -> {points} -> {''.join(map(chr, points))!r}")
    return Answer(lines, facts)


def q2_vocab_size(ctx):
    """What are the pros and cons of a large vs a small vocabulary?
    A larger vocabulary packs more text into each token: shorter sequences, more text in the context, less
    compute per character. The price: a bigger embedding table and output layer (a row of n_embd numbers
    per token), and rare tokens that get few training updates."""
    rows, facts = [], {}
    encoders = {size: bpe.Tokenizer().train(ctx.corpus, size) for size in ctx.sizes}
    for key, enc in {**encoders, "GPT-2": ctx.gpt2}.items():
        counts = {label: n_tokens(enc, text) for label, text in SAMPLES.items()}
        corpus_tokens = n_tokens(enc, ctx.corpus)
        facts[key] = dict(vocab=enc.n_vocab, corpus_tokens=corpus_tokens, **counts)
        per_token = len(ctx.corpus.encode()) / max(corpus_tokens, 1)
        rows.append([key if key == "GPT-2" else f"ours {key}", enc.n_vocab, *counts.values(), corpus_tokens,
                     f"{per_token:.2f}", f"{enc.n_vocab * GPT2_N_EMBD:,}"])
    headers = ["tokenizer", "vocab", *(f"{label} tokens" for label in SAMPLES), "corpus tokens",
               "corpus bytes/token", f"embedding params (vocab x {GPT2_N_EMBD})"]
    return Answer(markdown_table(headers, rows), facts)


def q3_reverse(ctx):
    """Why do LLMs struggle to reverse a string?
    The model never sees letters, only ids of multi-letter chunks; to reverse a word it must recall how
    each chunk is spelled. The reversed word splits into other, rarer chunks, and reversing the chunks is
    not reversing the letters. Writing the letters apart first (a token each) makes the task easy."""
    word, lines, facts = "lollipop", [], {}
    for label, text in {"word": word, "reversed": word[::-1], "spaced letters": " ".join(word)}.items():
        facts[label] = dict(gpt2=n_tokens(ctx.gpt2, text), ours=n_tokens(ctx.ours, text))
        lines.append(f"{label:>14} {text!r}: GPT-2 {facts[label]['gpt2']} tokens {pieces(ctx.gpt2, text)}, "
                     f"ours {facts[label]['ours']} {pieces(ctx.ours, text)}")
    facts["tokens reversed"] = flipped = ctx.gpt2.decode(ctx.gpt2.encode_ordinary(word)[::-1])
    lines.append(f"reversing GPT-2's tokens of {word!r} instead of its letters gives {flipped!r}, "
                 f"not {word[::-1]!r}")
    return Answer(lines, facts)


def q4_non_english(ctx):
    """Why do LLMs do worse on non-English text such as Japanese or Chinese?
    GPT-2's merges were learned on mostly English text: an English word is one token, a Chinese or
    Japanese character (3 UTF-8 bytes) often 2-3. The same meaning costs about twice the tokens, so less
    fits in the context. A tokenizer trained on text with Chinese in it narrows the gap."""
    encoders, rows, facts = {"GPT-2": ctx.gpt2, "ours": ctx.ours, **ctx.others}, [], {}
    for lang, text in LANGUAGES.items():
        counts = {name: n_tokens(enc, text) for name, enc in encoders.items()}
        facts[lang] = dict(chars=len(text), bytes=len(text.encode()), **counts)
        rows.append([lang, len(text), len(text.encode()),
                     *(f"{c} ({c / len(text):.2f}/char)" for c in counts.values())])
    headers = ["language", "chars", "UTF-8 bytes", *(f"{n} tokens" for n in encoders)]
    lines = markdown_table(headers, rows) + ["Chinese, GPT-2: " + pieces(ctx.gpt2, LANGUAGES["Chinese"])]
    return Answer(lines, facts)


def q5_arithmetic(ctx):
    """Why do LLMs struggle with simple arithmetic?
    Numbers are cut into whatever digit chunks were frequent in the training text, so digits do not line
    up: one four-digit number is one token, the next splits 2+2 or 1+3, and column-wise addition needs
    positions the model cannot see. GPT-4's pattern cuts digit runs into groups of three."""
    examples = ["127", "1234", "12345", "2024", "677 + 234 = 911", "3.14159"]
    lines, facts = [f"{s!r}: GPT-2 {pieces(ctx.gpt2, s)}, ours {pieces(ctx.ours, s)}" for s in examples], {}
    for name, enc in (("gpt2", ctx.gpt2), ("ours", ctx.ours)):
        size = enc.decode_single_token_bytes
        splits = Counter("+".join(str(len(size(i))) for i in enc.encode_ordinary(str(n)))
                         for n in range(1000, 10000))
        facts[name] = dict(splits.most_common())
        shown = ", ".join(f"{split}: {count}" for split, count in splits.most_common())
        lines.append(f"{name}, how the 9000 numbers 1000..9999 split (digits per token): {shown}")
    return Answer(lines, facts)


def q6_python(ctx):
    """Why did GPT-2 have trouble with Python?
    GPT-2's vocabulary has no merges for runs of spaces, so every space of indentation is its own token
    (id 220): code burns the context on spaces, and the model must count them to get the nesting right. A
    tokenizer trained on plenty of code (cl100k_base) has tokens for whole indentation runs."""
    encoders, lines, facts = {"GPT-2": ctx.gpt2}, [], {}
    if "cl100k_base" in ctx.others:
        encoders["cl100k_base"] = ctx.others["cl100k_base"]
    else:
        encoders["ours, trained on Python"] = bpe.Tokenizer("gpt4").train(bpe.read_text(__file__), 512)
        lines.append("(cl100k_base is not loaded here, so a GPT-4-pattern BPE trained at vocab 512 on this "
                     "script's own source stands in for a tokenizer that has seen code)")
    for name, enc in encoders.items():
        ids = enc.encode_ordinary(PY_SNIPPET)
        spaces = sum(1 for i in ids if enc.decode_single_token_bytes(i).strip() == b"")
        facts[name] = dict(tokens=len(ids), whitespace_tokens=spaces)
        lines.append(f"{name}: {len(ids)} tokens for the snippet below, {spaces} of them only whitespace")
    line = "            self.counts[word] += 1"
    lines += [f"{line!r}, {name}: {pieces(enc, line)}" for name, enc in encoders.items()]
    return Answer(lines, facts)


def q7_endoftext(ctx):
    """Why does a model stop when it meets the string <|endoftext|>?
    Every training document ends with one special token, id 50256, so the model learns to predict it when
    a text is finished, and sampling stops there. The string is special only if the tokenizer parses it:
    tiktoken refuses it in user text by default, so nobody can inject the control token."""
    text = "<|endoftext|>"
    allowed, ordinary = ctx.gpt2.encode(text, allowed_special="all"), ctx.gpt2.encode_ordinary(text)
    try:
        refused = f"no error: {ctx.gpt2.encode(text)}"
    except ValueError as e:
        refused = "ValueError: " + str(e).splitlines()[0][:80]
    facts = dict(allowed=allowed, ordinary=ordinary, eot_token=ctx.gpt2.eot_token, refused=refused)
    lines = [f"encode({text!r}, allowed_special='all') -> {allowed} (eot_token = {ctx.gpt2.eot_token})",
             f"encode({text!r}) by default -> {refused}",
             f"encode_ordinary({text!r}) -> {len(ordinary)} ordinary tokens {pieces(ctx.gpt2, text)}",
             f"ours (no special tokens) -> {n_tokens(ctx.ours, text)} tokens {pieces(ctx.ours, text)}"]
    return Answer(lines, facts)


def q8_solidgoldmagikarp(ctx):
    """Why did " SolidGoldMagikarp" break models?
    The tokenizer was trained on text where this Reddit user name was frequent, so it became one token;
    the model's training data barely held it, so that token's embedding row was almost never updated and
    stayed near its random start. An untrained vector pushes the model off every path it learned."""
    facts, lines = {}, []
    for text in (" SolidGoldMagikarp", "SolidGoldMagikarp", " petertodd"):
        facts[text] = ids = ctx.gpt2.encode_ordinary(text)
        lines.append(f"GPT-2 {text!r} -> {len(ids)} token{'s' * (len(ids) > 1)} {ids} "
                     f"{pieces(ctx.gpt2, text)}")
    facts["ours"] = n_tokens(ctx.ours, text := " SolidGoldMagikarp")
    lines.append(f"ours {text!r} -> {facts['ours']} tokens {pieces(ctx.ours, text)}")
    return Answer(lines, facts)


def q9_yaml_json(ctx):
    """Why is YAML cheaper than JSON for LLMs?
    The same data in JSON spends tokens on quotes, braces, brackets and commas; YAML says it with
    indentation and newlines. Fewer tokens: lower cost per call, more room in the context. Pretty-printed
    JSON is the worst case for GPT-2, whose every indentation space is a token (question 6)."""
    import yaml  # PyYAML: installed with transformers
    formats = {"JSON (indent=2)": json.dumps(DATA, indent=2), "JSON (compact)": json.dumps(DATA),
               "YAML": yaml.safe_dump(DATA, sort_keys=False)}
    facts = {name: dict(gpt2=n_tokens(ctx.gpt2, text), ours=n_tokens(ctx.ours, text), chars=len(text))
             for name, text in formats.items()}
    rows = [[name, f["chars"], f["gpt2"], f["ours"]] for name, f in facts.items()]
    lines = markdown_table(["format", "chars", "GPT-2 tokens", "ours tokens"], rows)
    return Answer(lines + [f"YAML, GPT-2: {pieces(ctx.gpt2, formats['YAML'])}"], facts)


def q10_not_end_to_end(ctx):
    """Why is an LLM not truly end-to-end language modeling?
    The tokenizer is a separate stage, trained on its own data and frozen before the network sees
    anything. So the network must learn that 'hello', ' hello' and 'Hello' (unrelated ids) mean the same,
    and a prompt ending in a space hands it a lone ' ' token it rarely saw. Many quirks above come from
    this stage."""
    words = ["hello", " hello", "Hello", " Hello", "HELLO", "hello "]
    facts = {w: dict(gpt2=ctx.gpt2.encode_ordinary(w), ours=ctx.ours.encode_ordinary(w)) for w in words}
    lines = [f"{w!r:>10}: GPT-2 {facts[w]['gpt2']}  ours {facts[w]['ours']}" for w in words]
    lines += [f"{prompt!r}: GPT-2 {pieces(ctx.gpt2, prompt)}" for prompt in ("Here is a", "Here is a ")]
    return Answer(lines, facts)


QUESTIONS = [q1_code_points, q2_vocab_size, q3_reverse, q4_non_english, q5_arithmetic,
             q6_python, q7_endoftext, q8_solidgoldmagikarp, q9_yaml_json, q10_not_end_to_end]


# --- The command line
def run(args):
    # Validate every flag and read every text before anything slow happens.
    if args.explain is not None and not 0 <= args.explain <= len(QUESTIONS):
        raise ValueError(f"--explain takes a question number 1..{len(QUESTIONS)}, got {args.explain}")
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        raise ValueError(f"--sizes must be comma-separated integers, got {args.sizes!r}") from None
    if not all(256 <= size <= bpe.MAX_VOCAB for size in sizes + [args.vocab_size]):
        raise ValueError(f"--sizes and --vocab-size must be at least 256 (the single bytes) and at most "
                         f"{bpe.MAX_VOCAB:,}")
    texts = {**SAMPLES, **{f"text {i}": text for i, text in enumerate(args.text, 1)}}
    for path in args.file:
        texts[os.path.basename(path) if os.path.basename(path) not in texts else path] = bpe.read_text(path)
    if empty := [label for label, text in texts.items() if not text]:
        raise ValueError(f"{empty[0]} is empty: there is nothing to tokenize")
    if args.plot:
        if not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
            raise FileNotFoundError(f"cannot write {args.plot}: its folder does not exist")
        bpe.check_output(args.plot, [args.model, args.corpus, *args.file])
    ours = load_or_train_ours(args.model, args.corpus, args.vocab_size)
    gpt2 = load_tiktoken("gpt2")
    others = {name: enc for name in filter(None, args.others.split(",")) if (enc := load_tiktoken(name))}
    if args.explain is not None:
        if gpt2 is None:
            raise ValueError("--explain needs GPT-2's tokenizer: set TIKTOKEN_CACHE_DIR to a filled cache")
        ctx = Context(gpt2, ours, bpe.read_text(args.corpus) if args.explain in (0, 2) else "", sizes, others)
        for number, question in enumerate(QUESTIONS, 1):
            if args.explain in (0, number):
                title, why = question.__doc__.split("\n", 1)
                print(f"\n=== {number}/10. {title} ===\n{' '.join(why.split())}\n" +
                      "\n".join("  " + line for line in question(ctx).lines))
        return
    contenders = {f"ours ({os.path.basename(args.model)}, {len(ours.vocab)})": ours}
    contenders.update({enc.name: enc for enc in [gpt2] + list(others.values()) if enc is not None})
    rows = [measure(name, enc, label, text) for label, text in texts.items()
            for name, enc in contenders.items()]
    table = markdown_table(["text", "tokenizer", "chars", "bytes", "tokens", "bytes/token", "chars/token"],
                           [[r["text"], r["tokenizer"], r["chars"], r["bytes"], r["tokens"],
                             f"{r['bytes_per_token']:.2f}", f"{r['chars_per_token']:.2f}"] for r in rows])
    print(*table, "", *(f"{r['text']}, {r['tokenizer']}: {r['pieces']}" for r in rows), sep="\n")
    if args.plot:
        plot_comparison(rows, args.plot)
        print(f"\nwrote {args.plot}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="manual.model", help="our tokenizer (trained from --corpus if missing)")
    p.add_argument("--corpus", default="manual.txt", help="training text for --model and for --explain 2")
    p.add_argument("--vocab-size", type=int, default=1024, help="vocab size when --model is trained")
    p.add_argument("--text", action="append", default=[], help="another text to compare (repeatable)")
    p.add_argument("--file", action="append", default=[], help="a UTF-8 file to compare (repeatable)")
    p.add_argument("--plot", default="tokenizers.png", help="bar chart PNG ('' for none)")
    p.add_argument("--explain", type=int, nargs="?", const=0, metavar="N",
                   help="answer the ten tokenization questions (or just question N)")
    p.add_argument("--others", default="cl100k_base,o200k_base",  # GPT-4's and GPT-4o's
                   help="more tiktoken encodings, comma-separated ('' for none; skipped if they cannot load)")
    p.add_argument("--sizes", default="300,512,1024,2048", help="vocabulary sizes for --explain 2")
    try:
        run(p.parse_args(argv))
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
