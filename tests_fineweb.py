from test_all import *  # noqa: F401,F403  (fixtures: offline_tiktoken (autouse), gpt2_enc)
# ---------------------------------------------------------------------------------------------
# fineweb.py: shards must hold exactly [EOT] + tiktoken's ids of every document, in order, with no
# token lost or duplicated at shard boundaries, and a resumed run must write the same bytes.
# ---------------------------------------------------------------------------------------------
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fineweb

_FINEWEB_HERE = pathlib.Path(__file__).resolve().parent
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
                  "--workers", "1", *extra])


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
    assert [len(s) for s in shards[:-1]] == [_FINEWEB_SHARD] * (n - 1) and 0 < len(shards[-1]) <= _FINEWEB_SHARD
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


def test_fineweb_cli_with_spawned_pool_matches_in_process_run(tmp_path):
    # The real script as __main__ with 2 pool workers started by 'spawn' (macOS/Windows' default): each
    # worker re-imports fineweb.py, so this fails without the __main__ guard or a module-level worker.
    source = _fineweb_write_jsonl(tmp_path / "docs.jsonl", _fineweb_docs())
    _fineweb_run(source, tmp_path / "inproc")
    argv = ["fineweb.py", "--source", source, "--out-dir", str(tmp_path / "cli"),
            "--shard-size", str(_FINEWEB_SHARD), "--workers", "2"]
    code = ("import multiprocessing, runpy, sys; multiprocessing.set_start_method('spawn'); "
            f"sys.argv = {argv!r}; runpy.run_path('fineweb.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=_FINEWEB_HERE, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _fineweb_files(tmp_path / "cli") == _fineweb_files(tmp_path / "inproc")


def test_fineweb_cli_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "fineweb.py", "--source", str(tmp_path / "missing.jsonl"),
                           "--out-dir", str(tmp_path / "out")],
                          cwd=_FINEWEB_HERE, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
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

    made, nope = str(tmp_path / "made"), str(tmp_path / "nope") + "/"
    return {   # case: (arguments, expected part of the message); --out-dir is a fresh directory unless given
        "missing dir": (["--source", nope], "not found"),
        "empty glob": (["--source", str(tmp_path / "*.parquet")], "no .txt, .jsonl or .parquet files match"),
        "unwritable out dir": (["--source", good, "--out-dir", good + "/sub"], "cannot write to output directory"),
        "bad json": (["--source", str(bad_json)], "bad.jsonl:2: not valid JSON"),
        "missing field": (["--source", good, "--text-field", "body"], "no field 'body'"),
        "changed options": (["--source", good, "--out-dir", made, "--shard-size", "7"], "made with shard_size=1000"),
        "corrupt manifest": (["--source", good, "--out-dir", str(corrupt)], "manifest.json is corrupt"),
        "foreign shards": (["--source", good, "--out-dir", str(foreign)], "no manifest.json"),
        "bad shard size": (["--source", good, "--shard-size", "0"], "--shard-size must be"),
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
        ds = datasets.Dataset.from_dict({"id": list(range(len(docs))), "text": docs, "score": [1.5] * len(docs)})
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
