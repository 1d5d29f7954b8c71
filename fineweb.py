"""Tokenize a text corpus into .npy token shards for train_gpt2.py, resumably.

    python fineweb.py                                  # FineWeb-Edu sample-10BT, ~100 shards, ~20 GB
    python fineweb.py --streaming                      # same shards, no ~28 GB parquet cache on disk
    python fineweb.py --source my_corpus/ --out-dir my_shards --shard-size 10_000_000
    python fineweb.py --source 'data/*.jsonl' --text-field content --tokenizer my_bpe.model
    python fineweb.py --source Salesforce/wikitext --name wikitext-103-raw-v1 --split train

Each document (a .txt file, .jsonl line or .parquet row of --source, or a Hub dataset's row) becomes
<|endoftext|> + its tokens, packed into OUT/edufineweb_val_000000.npy, edufineweb_train_000001.npy, ... with
OUT/manifest.json. Rerun an interrupted command to resume: the result is byte for byte an uninterrupted run's.
"""
import argparse
import contextlib
import glob
import hashlib
import itertools
import json
import multiprocessing
import os
import pathlib
import sys
import tempfile

import numpy as np
from tqdm import tqdm

DEFAULT_DATASET, DEFAULT_CONFIG = "HuggingFaceFW/fineweb-edu", "sample-10BT"
SHARD_PREFIX = "edufineweb"               # train_gpt2.py looks for {prefix}_{val|train}_{index:06d}.npy
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")
MANIFEST = "manifest.json"


# --- 1. Reading documents: local files or a HuggingFace dataset, always in the same order ---------
def local_files(source):
    """The sorted list of files a local --source names (file, directory or glob); None for a Hub name."""
    if os.path.exists(source) or any(c in source for c in "*?["):
        pattern = os.path.join(source, "**", "*") if os.path.isdir(source) else source
        found = [source] if os.path.isfile(source) else glob.glob(pattern, recursive=True)
        files = sorted(p for p in found if os.path.isfile(p) and p.endswith(LOCAL_SUFFIXES))
        if not files:
            raise FileNotFoundError(f"no .txt, .jsonl or .parquet files match {source}")
        return files
    # Something that can only be a path (a file suffix, ./, /, ~): say so, rather than ask the Hub for it.
    if source.endswith(LOCAL_SUFFIXES) or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise FileNotFoundError(f"source {source} not found")
    return None


def text_of(record, text_field, where):
    if not isinstance(record, dict) or text_field not in record:
        raise ValueError(f"{where}: record has no field '{text_field}' (choose one with --text-field)")
    if not isinstance(record[text_field], str):
        raise ValueError(f"{where}: field '{text_field}' is {type(record[text_field]).__name__}, not text")
    return record[text_field]


def read_local_documents(files, text_field):
    for path in files:
        where = path
        try:
            if path.endswith(".txt"):
                yield pathlib.Path(path).read_text(encoding="utf-8")   # one .txt file = one document
            elif path.endswith(".jsonl"):
                with open(path, encoding="utf-8") as f:
                    for line_no, line in enumerate(f, 1):
                        where = f"{path}:{line_no}"
                        if line.strip():              # tolerate blank lines (e.g. a trailing one)
                            yield text_of(json.loads(line), text_field, where)
            else:
                import pyarrow.parquet as pq          # ships with `datasets`
                parquet = pq.ParquetFile(path)
                if text_field not in parquet.schema_arrow.names:
                    raise ValueError(f"{path}: no column '{text_field}' (choose one with --text-field)")
                for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
                    for text in batch.column(0).to_pylist():
                        yield text_of({text_field: text}, text_field, path)
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg})") from None


def open_documents(source, files, name, split, streaming, text_field, start):
    """(the documents' texts from number `start` on, their number or None), from local files or the Hub."""
    if files is not None:                      # skipping finished documents is cheap: read, not tokenized
        return itertools.islice(read_local_documents(files, text_field), start, None), None
    import datasets                            # imported here: slow to import, only needed for Hub data
    what = source + (f" ({name})" if name else "")
    try:
        ds = datasets.load_dataset(source, name=name, split=split, streaming=streaming)
    except ConnectionError as e:               # what datasets raises offline (HF_HUB_OFFLINE or no network)
        raise ConnectionError(f"cannot reach the HuggingFace Hub to get {what}: are you offline? "
                              f"({e}); to tokenize local files instead, pass --source PATH") from None
    except FileNotFoundError as e:             # datasets.DatasetNotFoundError and friends
        raise FileNotFoundError(f"no local path {source} and no dataset {what} on the HuggingFace Hub "
                                f"({str(e).splitlines()[0]})") from None
    except ValueError as e:                    # e.g. an unknown config --name or --split
        raise ValueError(f"cannot load {what} split {split}: {str(e).splitlines()[0]}") from None
    if ds.column_names is not None and text_field not in ds.column_names:
        raise ValueError(f"{what} has no column '{text_field}' (it has {', '.join(ds.column_names)}; "
                         "choose one with --text-field)")
    ds = ds.select_columns([text_field])       # don't ship the other columns to the tokenizer workers
    splits = getattr(ds.info, "splits", None) or {}  # a streaming dataset has no len(); its metadata may say
    total = len(ds) if not streaming else (splits[split].num_examples or None) if split in splits else None
    return (text_of(r, text_field, "dataset row") for r in (ds.skip(start) if start else ds)), total


# --- 2. Tokenizing: one encoder per pool worker, documents in, arrays of token ids out ------------
EOT = "<|endoftext|>"
_encoder = None                                # each worker's own (tiktoken Encoding, EOT id, dtype)


def load_encoder(tokenizer):
    """(tiktoken Encoding, id of <|endoftext|>, shard dtype) for "gpt2" or a bpe.py .model file.
    Ids that do not fit in uint16 go into uint32 shards (train_gpt2.py reads both)."""
    import tiktoken
    if tokenizer == "gpt2":
        try:
            enc = tiktoken.get_encoding("gpt2")
        except OSError as e:                   # tiktoken downloads GPT-2's files once, then caches them
            raise ConnectionError(f"cannot load tiktoken's GPT-2 encoding (it downloads its files on first "
                                  f"use; offline? point TIKTOKEN_CACHE_DIR at a filled cache): {e}") from None
        return enc, enc.eot_token, np.uint16
    import bpe
    tok = bpe.Tokenizer().load(tokenizer)      # raises ValueError / OSError naming the file
    if EOT not in tok.special_tokens:
        raise ValueError(f"{tokenizer} has no {EOT} special token, which goes before every document: train "
                         f"it with `python bpe.py TEXT VOCAB --special '{EOT}'`")
    n_ids = max([*tok.vocab, *tok.special_tokens.values()]) + 1
    if n_ids > 2**32:
        raise ValueError(f"{tokenizer} has token ids up to {n_ids - 1}, beyond uint32 shards")
    return tok.to_tiktoken(), tok.special_tokens[EOT], np.uint16 if n_ids <= 2**16 else np.uint32


def init_worker(tokenizer):
    global _encoder
    _encoder = load_encoder(tokenizer)


def tokenize(text):
    """<|endoftext|> and the document's ids, in the shard dtype. Module-level so pools can pickle it."""
    enc, eot, dtype = _encoder
    return np.array([eot] + enc.encode_ordinary(text), dtype=dtype)


# --- 3. Shards and the manifest, written atomically (a crash never leaves half a file); the main loop ---
def write_atomically(path, write):
    with open(path + ".tmp", "wb") as f:
        write(f)                                # np.save to a file object: no ".npy" appended to the name
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def save_manifest(out_dir, manifest):
    text = json.dumps(manifest, indent=1) + "\n"
    write_atomically(os.path.join(out_dir, MANIFEST), lambda f: f.write(text.encode()))


def load_manifest(out_dir, config, dtype, n_ids):
    """The manifest of an earlier run with the same config, trimmed to the shards still intact on disk;
    a fresh one when there is none. Errors out rather than overwrite shards made some other way."""
    try:                                      # first prove we can write there, before any download starts
        os.makedirs(out_dir, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()
    except OSError as e:
        raise PermissionError(f"cannot write to output directory {out_dir} ({e.strerror or e})") from None
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
        if glob.glob(os.path.join(out_dir, f"{SHARD_PREFIX}_*.npy")):
            raise ValueError(f"{out_dir} already holds shards but no {MANIFEST}, so they were not made by "
                             "this script: delete them or pick another --out-dir")
        return {"config": config, "shards": [], "complete": False}
    try:
        manifest = json.loads(pathlib.Path(path).read_text())
        old_config, old_shards = dict(manifest["config"]), list(manifest["shards"])
        manifest["complete"] = bool(manifest["complete"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is corrupt: delete {out_dir} and start again") from None
    for key in sorted(set(config) | set(old_config)):
        if old_config.get(key) != config.get(key):
            raise ValueError(f"{out_dir} was made with {key}={old_config.get(key)!r}, but this run asks "
                             f"for {key}={config.get(key)!r}: rerun with those options or another --out-dir")
    manifest["shards"] = []                   # the longest run of listed shards that are whole on disk
    for entry in old_shards:
        try:
            shard = np.load(os.path.join(out_dir, entry["file"]), mmap_mode="r")
        except (OSError, ValueError):
            break
        if shard.dtype != dtype or shard.shape != (entry["tokens"],) or int(shard.max(initial=0)) >= n_ids:
            break
        manifest["shards"].append(entry)
    manifest["complete"] &= len(manifest["shards"]) == len(old_shards)
    return manifest


def shard_tokens(token_arrays, shard_size, first_doc, first_offset, dtype):
    """Yield the documents' tokens in shards (a document may straddle two) as (tokens, next_doc, next_offset):
    where the next shard starts, or None, None for the last shard, which may be short."""
    buffer, filled = np.empty(shard_size, dtype=dtype), 0
    for doc, tokens in enumerate(token_arrays, start=first_doc):
        pos = first_offset if doc == first_doc else 0   # a resumed document skips what is already written
        while pos < len(tokens):
            if filled == shard_size:                    # a full shard, and more tokens follow
                yield buffer.copy(), doc, pos
                filled = 0
            take = min(shard_size - filled, len(tokens) - pos)
            buffer[filled:filled + take] = tokens[pos:pos + take]
            filled, pos = filled + take, pos + take
    if filled:
        yield buffer[:filled].copy(), None, None


def build_shards(source=DEFAULT_DATASET, name=None, split="train", streaming=False, text_field="text",
                 out_dir="edu_fineweb10B", shard_size=10**8, workers=1, max_shards=None, tokenizer="gpt2"):
    """Tokenize `source` into `out_dir`'s shards, resuming an earlier run -> the manifest; one-line errors."""
    for flag, value in (("--shard-size", shard_size), ("--workers", workers), ("--max-shards", max_shards)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, not {value}")
    if workers > 4 * (os.cpu_count() or 1):
        raise ValueError(f"--workers {workers} is more than 4 per CPU core ({os.cpu_count()} cores)")
    if shard_size > 2**31:                    # a shard is built in memory, and read whole by np.load
        raise ValueError(f"--shard-size {shard_size:,} is absurd: shards hold at most 2**31 tokens")
    name = DEFAULT_CONFIG if name is None and source == DEFAULT_DATASET else name
    files = local_files(source)
    enc, _, dtype = load_encoder(tokenizer)   # fail here, with a clear message, not inside the workers
    config = dict(source=source, name=name, split=split, text_field=text_field, shard_size=shard_size,
                  tokenizer=tokenizer)
    if tokenizer != "gpt2":                   # a changed tokenizer file is another config
        config["tokenizer_sha256"] = hashlib.sha256(pathlib.Path(tokenizer).read_bytes()).hexdigest()
    # Local files are recorded with their sizes; Hub datasets with the mode (its order may differ).
    config.update({"files": [[f, os.path.getsize(f)] for f in files]} if files else {"streaming": streaming})
    manifest = load_manifest(out_dir, config, dtype, enc.n_vocab)
    shards = manifest["shards"]
    if manifest["complete"] or (max_shards is not None and len(shards) >= max_shards):
        print(f"{out_dir}: {len(shards)} shards already done, nothing to do")
        return manifest
    save_manifest(out_dir, manifest)          # written before any shard: see load_manifest's check
    first_doc, first_offset = (shards[-1]["next_doc"], shards[-1]["next_offset"]) if shards else (0, 0)
    documents, total = open_documents(source, files, name, split, streaming, text_field, first_doc)
    if shards:
        print(f"resuming after {len(shards)} finished shards, at document {first_doc:,}")
    pool = multiprocessing.Pool(workers, init_worker, (tokenizer,)) if workers > 1 else init_worker(tokenizer)
    # imap keeps the documents' order: the shards are the same whatever the number of workers
    token_arrays = pool.imap(tokenize, documents, chunksize=16) if pool else map(tokenize, documents)
    bar = tqdm(token_arrays, total=total, initial=first_doc, unit="docs", unit_scale=True, desc=out_dir)
    # Each shard is written, then recorded in the manifest: a shard on disk but not listed is redone.
    with pool or contextlib.nullcontext(), bar:  # the pool's exit terminates its workers
        for tokens, next_doc, next_offset in shard_tokens(bar, shard_size, first_doc, first_offset, dtype):
            file = f"{SHARD_PREFIX}_{'train' if shards else 'val'}_{len(shards):06d}.npy"
            write_atomically(os.path.join(out_dir, file), lambda f: np.save(f, tokens))
            shards.append(dict(file=file, tokens=len(tokens), next_doc=next_doc, next_offset=next_offset))
            manifest["complete"] = next_doc is None
            save_manifest(out_dir, manifest)
            bar.set_postfix(shards=len(shards), refresh=False)
            if max_shards is not None and len(shards) >= max_shards:
                break
    if not shards:
        raise ValueError(f"{source} holds no documents")
    print(f"{out_dir}: {len(shards)} shards, {sum(s['tokens'] for s in shards):,} tokens"
          + ("" if manifest["complete"] else " (stopped early: rerun without --max-shards to finish)"))
    if manifest["complete"] and len(shards) < 2:
        print("warning: only one shard (the val shard): lower --shard-size to get training shards too")
    return manifest


# --- 4. Command line ------------------------------------------------------------------------------
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=DEFAULT_DATASET, help="local .txt/.jsonl/.parquet file, directory or "
                   f"glob, or a HuggingFace dataset name (default: {DEFAULT_DATASET})")
    p.add_argument("--name", help=f"dataset config (default: {DEFAULT_CONFIG} for {DEFAULT_DATASET})")
    p.add_argument("--split", default="train", help="dataset split to read (default: train)")
    p.add_argument("--streaming", action="store_true", help="stream a Hub dataset instead of downloading it")
    p.add_argument("--text-field", default="text", help="field/column holding the text (default: text)")
    p.add_argument("--out-dir", default="edu_fineweb10B", help="where shards go (default: edu_fineweb10B)")
    p.add_argument("--shard-size", type=int, default=10**8, help="tokens per shard (default: 100_000_000)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                   help="tokenizer processes (default: half the CPU cores; 1 = no pool)")
    p.add_argument("--max-shards", type=int, help="stop after this many shards in all (a rerun continues)")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2 (tiktoken) or a .model file written by bpe.py")
    args = p.parse_args(argv)
    try:
        build_shards(**vars(args))
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    except MemoryError:
        sys.exit(f"error: out of memory with --shard-size {args.shard_size:,}: lower it")
    except KeyboardInterrupt:
        sys.exit("interrupted: finished shards are kept; run the same command again to resume")


if __name__ == "__main__":                    # required where pools spawn fresh interpreters (macOS, Windows)
    main()
