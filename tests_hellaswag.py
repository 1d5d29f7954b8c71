"""Tests for hellaswag.py: rendering vs tiktoken, packed/batched scoring vs one-at-a-time and vs
transformers' GPT2LMHeadModel, accuracy on known answers, DDP, malformed files, download, CLI."""
from test_all import *  # noqa: F401,F403  (fixtures: offline_tiktoken (autouse), gpt2_enc)

import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import types

import pytest
import torch

import hellaswag

HERE_DIR = os.path.dirname(os.path.abspath(__file__))

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
     ["Water the plant a day before you move it. [step] Moist soil holds together and slides out more easily.",
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
    from transformers import GPT2Config, GPT2LMHeadModel

    from model import GPT
    torch.manual_seed(0)
    # n_embd 16 keeps the 50257-row vocabulary projection (most of the tests' time) cheap
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=160, vocab_size=50257)).eval()
    hf_dir = str(tmp_path_factory.mktemp("hellaswag_tiny_hf"))
    hf.save_pretrained(hf_dir)
    gpt = GPT.from_pretrained(hf_dir).eval()
    return types.SimpleNamespace(hf=hf, gpt=gpt, hf_dir=hf_dir)


def test_hellaswag_file_schema_and_load(tmp_path):
    examples = _hellaswag_examples()
    assert len(examples) >= 20
    path = _hellaswag_write(tmp_path / "hs.jsonl", examples)
    loaded = hellaswag.load_examples(file=path)
    assert loaded == examples
    assert set(loaded[0]) == {"ind", "activity_label", "ctx_a", "ctx_b", "ctx", "split", "split_type", "label",
                              "endings", "source_id"}
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
    query = ("Home and Garden: How to repot a houseplant. Choose a slightly larger pot. The new pot should be "
             "one or two inches wider than the old one..")
    # ctx_b "[title]".capitalize() is "[title]"; " [title]" -> ". " gives the harness's well-known ".." and
    # a trailing space, which moves into the continuation (as the harness does) before tokenizing
    assert context == gpt2_enc.encode(query)
    choice = "Water the plant a day before you move it. Moist soil holds together and slides out more easily."
    assert chars[0] == len(choice)
    assert endings[0] == gpt2_enc.encode(query + "  " + choice)[len(context):]
    # ActivityNet item: ctx_b is capitalized (and str.capitalize lowercases the rest)
    ex = dict(_hellaswag_examples()[3], ctx_b="then HE")
    context, endings, chars = hellaswag.render_parts(ex, gpt2_enc, "harness")
    assert context == gpt2_enc.encode("Shoveling snow: A man in a red coat clears snow from his driveway. Then he")
    assert endings[2] == gpt2_enc.encode(" throws a shovelful of snow onto the bank.")
    assert chars == [len(e) for e in ex["endings"]]
    with pytest.raises(ValueError, match="unknown style"):
        hellaswag.render_parts(ex, gpt2_enc, "lm-eval")


def _hellaswag_loop_losses(model, examples, enc, style):
    with torch.no_grad():
        return torch.stack([hellaswag.ending_losses_loop(model, ex, enc, "cpu", style) for ex in examples]).double()


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
        lengths = torch.tensor([[len(e) for e in hellaswag.render_parts(ex, gpt2_enc, style)[1]] for ex in examples])
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
        torch.testing.assert_close(_hellaswag_sums(one[:6]), _hellaswag_loop_losses(gpt, examples[:6], gpt2_enc, style),
                                   rtol=1e-6, atol=0)
        for method, batch_size in [("packed", 7)] + ([("rows", 5)] if style == "nanogpt" else []):
            batched = hellaswag.score_examples(gpt, examples, gpt2_enc, "cpu", batch_size, style, method=method)
            torch.testing.assert_close(_hellaswag_sums(batched), _hellaswag_sums(one), rtol=1e-6, atol=0)
            assert [(r["pred"], r["pred_norm"]) for r in batched] == [(r["pred"], r["pred_norm"]) for r in one]
            assert [r["ind"] for r in batched] == [ex["ind"] for ex in examples]  # input order kept
    # the fixed shapes used with --compile (batch padded with copies, length to COMPILE_PAD) change nothing
    parts = [hellaswag.render_parts(ex, gpt2_enc) for ex in examples[:5]]
    with torch.inference_mode():
        fixed = hellaswag.batch_losses(gpt, parts, "cpu", "packed", fixed_batch=8)
        torch.testing.assert_close(fixed, hellaswag.batch_losses(gpt, parts, "cpu", "packed"), rtol=1e-6, atol=0)
    assert fixed.shape == (5, 4)
    # evaluate() on a torch.compile'd model (it unwraps it: nothing gets compiled) counts the same answers
    compiled = hellaswag.evaluate(torch.compile(gpt), examples, gpt2_enc, "cpu", batch_size=4, style="harness")
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
    nanogpt = hellaswag.evaluate(model, examples, gpt2_enc, "cpu", batch_size=2, style="nanogpt", method="rows")
    assert nanogpt == dict(acc=2 / 5, acc_norm=1 / 5, n=5, correct=2, correct_norm=1, style="nanogpt")
    harness = hellaswag.evaluate(model, examples, gpt2_enc, "cpu", batch_size=3, style="harness", method="rows")
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
        result = hellaswag.evaluate(model.eval(), hellaswag.load_examples(file=data), enc, "cpu", batch_size=4)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


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


def _hellaswag_cli(*args):
    return subprocess.run([sys.executable, os.path.join(HERE_DIR, "hellaswag.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=HERE_DIR)


def test_hellaswag_cli(hellaswag_models, gpt2_enc, tmp_path, capsys):
    from model import ByteTokenizer, save_checkpoint
    examples = _hellaswag_examples()
    data = _hellaswag_write(tmp_path / "hs.jsonl", examples)
    ckpt = str(tmp_path / "tiny.pt")
    save_checkpoint(ckpt, hellaswag_models.gpt, "gpt2", step=7)
    out = tmp_path / "preds.jsonl"
    run = _hellaswag_cli("--ckpt", ckpt, "--file", data, "--device", "cpu", "--batch-size", "5",
                         "--style", "harness", "--out", str(out))
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
    # --hf: transformers' own forward pass on the save_pretrained directory agrees (in-process: faster)
    hellaswag.main(["-m", hellaswag_models.hf_dir, "--hf", "--file", data, "--device", "cpu", "--style", "harness",
                    "--limit", "10"])
    summary = hellaswag.summarize(*hellaswag.count_correct(expected[:10]), style="harness")
    assert f"acc {summary['acc']:.4f} ({summary['correct']}/10)" in capsys.readouterr().out.strip().splitlines()[-1]
    # clear one-line errors: a byte-tokenizer checkpoint, a malformed file, a bad flag value
    from model import GPT, GPTConfig
    byte_ckpt = str(tmp_path / "byte.pt")
    save_checkpoint(byte_ckpt, GPT(GPTConfig(vocab_size=257, n_layer=1, n_head=1, n_embd=8, block_size=32)),
                    ByteTokenizer.name)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(examples[0]) + "\n{oops\n")
    for args, message in [(["--ckpt", byte_ckpt, "--file", data], "'byte' tokenizer"),
                          (["--ckpt", ckpt, "--file", str(bad)], "line 2: not valid JSON"),
                          (["--ckpt", ckpt, "--file", data, "--limit", "0"], "--limit must be at least 1"),
                          (["--ckpt", str(tmp_path / "none.pt"), "--file", data], "not found")]:
        with pytest.raises(SystemExit) as info:
            hellaswag.main(args + ["--device", "cpu"])
        error = str(info.value.code)
        assert error.startswith("error:") and message in error and "\n" not in error, error
