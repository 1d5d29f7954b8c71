"""Byte-level BPE tokenizer with minbpe's interface: the textbook algorithm, then a trainer and an encoder
that return exactly its answers, fast enough to train on megabytes in seconds.

    python bpe.py manual.txt 1024                 # train, save manual.model / manual.vocab, check round trip
    python bpe.py manual.txt 4096 --pattern gpt2 --special '<|endoftext|>' -o out/mytok
    python bpe.py --load manual.model --encode "Hello world"     # print the ids of a text
    from bpe import Tokenizer; tok = Tokenizer("gpt4").train(text, 1024); ids = tok.encode("hello world")
"""
import argparse
import contextlib
import functools
import gc
import heapq
import os
import re
import sys
import time
import unicodedata
import warnings
from array import array
from collections import Counter, defaultdict
from itertools import chain, repeat

import numpy as np
import regex

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "none": None, None: None}


# --- The textbook algorithm (minbpe's): the reference that everything below is proven against ------

def get_stats(ids, counts=None):
    """Count the adjacent pairs of `ids` into `counts`, a dict in text order ("aaa" has (a, a) twice)."""
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids, pair, new_id):
    """Replace every occurrence of `pair` in the list `ids` by new_id, left to right, without overlap."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def textbook_train(text, vocab_size, pattern=GPT4_PATTERN):
    """Merges {(a, b): new_id}: in the chunks of the split (or the whole text), merge the most frequent pair
    everywhere, repeat. Ties go to the first such pair in text order (max() over the dict)."""
    chunks = [list(chunk.encode("utf-8")) for chunk in (regex.findall(pattern, text) if pattern else [text])]
    merges = {}
    for new_id in range(256, vocab_size):
        counts = {}
        for ids in chunks:
            get_stats(ids, counts)
        if not counts:
            break
        pair = max(counts, key=counts.get)
        merges[pair] = new_id
        chunks = [merge(ids, pair, new_id) for ids in chunks]
    return merges


def textbook_encode(text, merges, pattern=GPT4_PATTERN):
    """Ids of `text`: in each chunk, merge the present pair of lowest merge id until none is a merge."""
    out = []
    for chunk in regex.findall(pattern, text) if pattern else [text]:
        ids = list(chunk.encode("utf-8"))
        while len(ids) >= 2:
            pair = min(get_stats(ids), key=lambda p: merges.get(p, float("inf")))
            if pair not in merges:
                break
            ids = merge(ids, pair, merges[pair])
        out.extend(ids)
    return out


# --- Speed paths: the textbook's answers, faster. Each knob switches one shortcut off: test_all.py
# checks every setting against the textbook, `bench.py tokenizer --ablate` times it.
BULK_MIN = 300              # merges with this many places (or more) run in numpy
RARE = 8                    # pairs rarer than this get a count but no place list, until one might win
PAUSE_GC = True             # no cycle collection while training or encoding (see paused_gc)
NARROW_MAX = 2**31 - 1      # training nodes are 32-bit ints (less memory to walk) while ids and counts fit
CACHE_CHUNKS = True         # encoding remembers the ids of each distinct chunk
TOKEN_TABLE = True          # a chunk that spells a token is looked up, not encoded
CUT_UNJOINABLE = True       # encoding cuts chunks between bytes that no token holds side by side
LONG_CHUNK = 64             # chunks longer than this encode with a heap (not in time quadratic in length)
NEVER = sys.maxsize         # "merge id" of a pair that is not a merge
MASK = (1 << 32) - 1        # training keys a pair (a, b) as a << 32 | b: ints hash faster than tuples
MAX_VOCAB = 2**31 - 1       # ids below this fit the pair keys

# tiktoken's spellings of the GPT-2 and GPT-4 patterns (from_tiktoken keeps them, save() writes them).
TIKTOKEN_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
TIKTOKEN_CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+"""
                           r"""| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
TIKTOKEN_PATTERNS = (TIKTOKEN_GPT2_PATTERN, TIKTOKEN_CL100K_PATTERN)

# The `re` twin. The built-in patterns use the character classes \p{L}, \p{N} and \s (and complements);
# spelled as the ranges of characters below U+10000 that `regex` itself puts in each class, they run in
# Python's `re`, which splits much faster. On text without characters beyond U+FFFF (Latin, CJK, code: nearly
# all text) every class test, hence every match, is the same; other text takes `regex`. The ranges are read
# from `regex`, never typed in, so both modules agree on the Unicode version too.
BEYOND_BMP = re.compile("[\U00010000-\U0010ffff]")


@functools.cache
def bmp_twin(pattern):
    """`re` twin of a built-in or tiktoken split pattern, exact on text without characters beyond U+FFFF;
    None for other patterns and on Python < 3.11, whose `re` lacks possessive quantifiers."""
    if pattern not in (GPT2_PATTERN, GPT4_PATTERN) + TIKTOKEN_PATTERNS or sys.version_info < (3, 11):
        return None
    bmp = "".join(map(chr, range(0x10000)))
    L, N, S = ("".join(f"{re.escape(run[0])}-{re.escape(run[-1])}" for run in regex.findall(f"[{cls}]+", bmp))
               for cls in (r"\p{L}", r"\p{N}", r"\s"))     # runs of neighbouring code points in the class
    for unicode_class, ranges in ((r"\s\p{L}\p{N}", S + L + N), (r"\p{L}\p{N}", L + N), (r"\p{L}", f"[{L}]"),
                                  (r"\p{N}", f"[{N}]"), (r"\S", f"[^{S}]"), (r"\s", f"[{S}]")):
        pattern = pattern.replace(unicode_class, ranges)
    return re.compile(pattern)


@contextlib.contextmanager
def paused_gc():
    """No cycle collection inside (PAUSE_GC): training and encoding make many small containers, none in a
    cycle, and a full collection would walk every one of them."""
    was_on = gc.isenabled()
    if PAUSE_GC:
        gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


# --- Fast training ---------------------------------------------------------------------------
# Why it learns the textbook's merges. Identical chunks are trained once, weighted by how often they occur:
# every pair count is the same sum. The distinct chunks lie side by side, in order of first appearance, in
# one doubly linked list (node = byte position), so positions order pairs as the textbook's dict does. Each
# pair keeps its count and ascending positions; a merge visits only those places and changes only the
# counts of the pairs around them, all that a recount would change. A heap of (-count, first position)
# gives the most frequent pair, ties to the leftmost. Counts only fall and first occurrences only move right
# (new pairs all hold the new token), so a stale entry is never better than the truth: it is refreshed when
# popped. As counts never grow, a pair too rare to win yet needs no place list (RARE) until the best count
# falls to its own.

def learn_merges(chunks, counts, num_merges, progress=None):
    """[((a, b), new_id), ...]: at most num_merges merges over the distinct byte strings `chunks` (in order of
    first appearance) occurring `counts` times each. progress(pair, new_id, count) comes with each merge."""
    nodes, views = _link_chunks(chunks, counts, 256 + num_merges)
    tok, nxt, rare = nodes[0], nodes[1], RARE
    pair_count, where, heap = _index_pairs(views, rare)
    scanned = {}                          # pair -> index in where[pair] of its first live occurrence

    def first_position(pair):              # of the pair's first live occurrence (None if none is left)
        a, b, positions = pair >> 32, pair & MASK, where[pair]
        for k in range(scanned.get(pair, 0), len(positions)):
            i = positions[k]
            if tok[i] == a and (j := nxt[i]) >= 0 and tok[j] == b:
                scanned[pair] = k
                return i
        scanned[pair] = len(positions)

    def pop_best():    # an entry whose count is right at a live position is exact; others are refreshed
        while heap:
            neg_count, pos, pair = heapq.heappop(heap)
            count = pair_count.get(pair, 0)
            if count == -neg_count:
                if (j := nxt[pos]) >= 0 and tok[pos] == pair >> 32 and tok[j] == pair & MASK:
                    return pair
                heapq.heappush(heap, (neg_count, first_position(pair), pair))
            elif count > 0:
                heapq.heappush(heap, (-count, pos, pair))    # the old position is still a lower bound

    merges = []
    with paused_gc():
        for new_id in range(256, 256 + num_merges):
            pair = pop_best()
            if rare > 1 and (pair is None or pair_count[pair] < rare):   # an unlisted pair might tie or win
                rare = 1                  # every pair is listed, and in the heap
                pair_count, where, heap = _index_pairs(views, rare)
                scanned.clear()
                pair = pop_best()
            if pair is None:
                break
            merges.append(((pair >> 32, pair & MASK), new_id))
            if progress is not None:
                progress(merges[-1][0], new_id, pair_count[pair])
            if len(where[pair]) >= BULK_MIN:
                created = _apply_merge_bulk(pair, new_id, *views, pair_count, where, rare)
            else:
                created = _apply_merge(pair, new_id, *nodes, pair_count, where, rare)
            del pair_count[pair], where[pair]
            scanned.pop(pair, None)
            for new_pair in created:      # new pairs all contain new_id: their counts are final
                heapq.heappush(heap, (-pair_count[new_pair], where[new_pair][0], new_pair))
    return merges


def _link_chunks(chunks, counts, last_id):
    """The chunks as one doubly linked list (node i = byte i of their concatenation, -1: no neighbour) ->
    arrays tok, nxt, prv, weight, which Python reads fast, and numpy views of them for merges in bulk."""
    lengths = np.array([len(c) for c in chunks], dtype=np.int64)
    n, starts = int(lengths.sum()), np.cumsum(lengths) - lengths
    tok = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    nxt, prv = np.arange(1, n + 1, dtype=np.int64), np.arange(-1, n - 1, dtype=np.int64)
    if n:
        nxt[starts + lengths - 1] = prv[starts] = -1
    weight = np.repeat(np.asarray(counts, dtype=np.int64), lengths)
    dtype, code = (np.int64, "q") if max(n, max(counts, default=0), last_id) > NARROW_MAX else (np.int32, "i")
    nodes = [array(code, x.astype(dtype).tobytes()) for x in (tok, nxt, prv, weight)]
    return nodes, [np.frombuffer(node, dtype=dtype) for node in nodes]


def _sum_by_pair(keys, weights):
    """Sort pair keys (stably: places of one pair stay in text order) -> (that order, the bounds of each run
    of one key, the distinct keys, the sum of each one's weights)."""
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    bounds = np.append(np.flatnonzero(np.diff(keys, prepend=keys[:1] - 1)), len(keys))   # where keys change
    return order, bounds, keys[bounds[:-1]], np.add.reduceat(weights[order], bounds[:-1], dtype=np.int64)


def _index_pairs(views, min_count):
    """Count every pair of live neighbours (dead nodes have tok -1) -> pair_count of all pairs; `where`, the
    ascending positions of those occurring min_count times or more; and their heap (-count, first, pair)."""
    tok, nxt, _, weight = views
    pos = np.flatnonzero((tok >= 0) & (nxt >= 0))
    order, bounds, keys, totals = _sum_by_pair(tok[pos].astype(np.int64) << 32 | tok[nxt[pos]], weight[pos])
    pos, bounds = pos[order], bounds.tolist()
    pair_count, where, heap = {}, {}, []
    for key, total, i, j in zip(keys.tolist(), totals.tolist(), bounds, bounds[1:]):
        pair_count[key] = total
        if total >= min_count:
            where[key] = pos[i:j] if j - i >= BULK_MIN else pos[i:j].tolist()
            heap.append((-total, int(pos[i]), key))
    heapq.heapify(heap)
    return pair_count, where, heap


def _apply_merge(pair, new_id, tok, nxt, prv, weight, pair_count, where, rare):
    """Merge every live occurrence of `pair`, left to right, and update the neighbour pairs' counts and
    places. -> the new pairs (all hold new_id) occurring `rare` times or more, which get a place list."""
    a, b = pair >> 32, pair & MASK
    # Places of the new pairs (x, new) and (new, y), grouped by x and y: counts are settled per group.
    lefts, rights = defaultdict(list), defaultdict(list)
    for i in where[pair]:                 # ascending, so this is left to right with no overlap
        if tok[i] != a or (j := nxt[i]) < 0 or tok[j] != b:
            continue                      # stale: node absorbed or already merged into something else
        left, right = prv[i], nxt[j]
        if left >= 0:                     # (x, a) becomes (x, new)
            x = tok[left]
            if x == new_id:               # (new, a) was made a moment ago by the previous merge, at `left`:
                rights[a].pop()           # it is gone again, but (b, a) lost that occurrence for good
                pair_count[b << 32 | a] -= weight[i]
            lefts[x].append(left)
        if right >= 0:                    # (b, y) becomes (new, y)
            rights[tok[right]].append(i)
            prv[right] = i
        tok[i], tok[j], nxt[i] = new_id, -1, right
    created = []                          # the old pair (x, a) or (b, y) loses what the new one gains
    for key, old, places in [(x << 32 | new_id, x << 32 | a, p) for x, p in lefts.items()] + \
            [(new_id << 32 | y, b << 32 | y, p) for y, p in rights.items()]:
        if places:
            c = sum(map(weight.__getitem__, places)) if len(places) > 1 else weight[places[0]]
            if old >> 32 != new_id:       # (new, a) was counted nowhere
                pair_count[old] -= c
            pair_count[key] = c
            if c >= rare:
                where[key] = places
                created.append(key)
    return created


def _apply_merge_bulk(pair, new_id, tok, nxt, prv, weight, pair_count, where, rare):
    """_apply_merge for a pair with many occurrences, on numpy arrays: same result, computed in bulk."""
    a, b = pair >> 32, pair & MASK
    pos = np.asarray(where[pair], dtype=np.int64)
    nx = nxt[pos]
    live = (tok[pos] == a) & (nx >= 0)
    live[live] = tok[nx[live]] == b
    pos, nx = pos[live], nx[live]
    if a == b and len(pos) > 1:           # runs "a a a ...": left to right keeps every other occurrence
        chained = np.append(False, nx[:-1] == pos[1:])
        index = np.arange(len(pos))
        keep = (index - np.maximum.accumulate(np.where(chained, 0, index))) % 2 == 0
        pos, nx = pos[keep], nx[keep]
    left, right, w = prv[pos], nxt[nx], weight[pos].astype(np.int64)
    # An occurrence whose left neighbour is the previous occurrence's merged node sees the new token there.
    after_merge = np.zeros(len(pos), dtype=bool)
    after_merge[1:] = right[:-1] == pos[1:]
    before_merge = np.append(after_merge[1:], False)
    left[after_merge] = pos[:-1][after_merge[1:]]
    has_left, has_right = left >= 0, right >= 0
    x = np.where(after_merge, new_id, tok[np.where(has_left, left, 0)].astype(np.int64))   # keys: 64 bits
    y = tok[np.where(has_right, right, 0)].astype(np.int64)
    # Old pairs lose these occurrences: (x, a) unless x is the new token, and (b, y).
    lost = has_left & ~after_merge
    _, _, keys, deltas = _sum_by_pair(np.concatenate([x[lost] << 32 | a, b << 32 | y[has_right]]),
                                      np.concatenate([w[lost], w[has_right]]))
    for key, delta in zip(keys.tolist(), deltas.tolist()):
        pair_count[key] -= delta
    tok[pos], tok[nx], nxt[pos] = new_id, -1, right
    prv[right[has_right]] = pos[has_right]
    # New pairs: (x, new) at the left neighbour; (new, y) here unless the next occurrence merges y. Within a
    # key the places stay ascending: a key comes from one side only, which lists them in text order.
    gain = has_right & ~before_merge
    keys = np.concatenate([x[has_left] << 32 | new_id, new_id << 32 | y[gain]])
    order, bounds, keys, totals = _sum_by_pair(keys, np.concatenate([w[has_left], w[gain]]))
    places = np.concatenate([left[has_left], pos[gain]])[order].tolist()
    pair_count.update(zip(keys.tolist(), totals.tolist()))
    listed = np.flatnonzero(totals >= rare)
    starts, ends, created = bounds[listed].tolist(), bounds[listed + 1].tolist(), keys[listed].tolist()
    where.update(zip(created, [places[i:j] for i, j in zip(starts, ends)]))
    return created


# --- Fast encoding ---------------------------------------------------------------------------
# Why it returns the textbook's ids. The textbook encodes each chunk on its own, so its ids depend only on
# the chunk: a cache from chunk text to ids is exact, and so is a table filled in advance with the ids of
# every token's text. Where two neighbouring bytes stand side by side in no token, no merge can ever join
# across them (what a merge makes is a token holding both), so the chunk falls apart there into pieces that
# encode alone (and repeat a lot: a long Chinese chunk becomes a few cached characters). In one piece,
# encode_chunk merges the lowest merge id present everywhere, left to right, as the textbook does, patching
# the merge ids of the two neighbours instead of recounting. Long pieces pop (merge id, position) from a
# heap instead: a merge only creates pairs whose merge ids are higher (they contain the new token), so the
# lowest id present is always at the top, its occurrences come out left to right, and an occurrence eaten
# by the previous one is found stale and skipped.

def encode_chunk(ids, merges):
    """Apply `merges` ((a, b) -> id) to the list `ids` as textbook_encode does to one chunk."""
    if len(ids) > LONG_CHUNK:
        return _encode_long_chunk(ids, merges)
    get = merges.get
    ranks = list(map(get, zip(ids, ids[1:]), repeat(NEVER)))   # merge id of each neighbour pair
    while ranks:
        best = min(ranks)
        if best == NEVER:
            break
        i = ranks.index(best)
        while True:                       # every occurrence of this pair, left to right
            ids[i] = best
            del ids[i + 1], ranks[i]
            if i < len(ranks):
                ranks[i] = get((best, ids[i + 1]), NEVER)
            if i > 0:
                ranks[i - 1] = get((ids[i - 1], best), NEVER)
            if best not in ranks:
                break
            i = ranks.index(best, i + 1)
    return ids


def _encode_long_chunk(ids, merges):
    """encode_chunk in O(n log n): lowest (merge id, position) first, from a heap over a linked list."""
    tok, nxt, prv = list(ids), list(range(1, len(ids))) + [-1], list(range(-1, len(ids) - 1))
    heap = [(merges[p], i) for i, p in enumerate(zip(ids, ids[1:])) if p in merges]
    heapq.heapify(heap)
    while heap:
        new_id, i = heapq.heappop(heap)
        j = nxt[i]
        if j < 0 or merges.get((tok[i], tok[j])) != new_id:
            continue                      # stale entry (a dead node has tok -1, which is in no merge)
        tok[i], tok[j], right = new_id, -1, nxt[j]
        nxt[i] = right
        if right >= 0:
            prv[right] = i
            if (r := merges.get((new_id, tok[right]))) is not None:
                heapq.heappush(heap, (r, i))
        if (left := prv[i]) >= 0 and (r := merges.get((tok[left], new_id))) is not None:
            heapq.heappush(heap, (r, left))
    return [t for t in tok if t >= 0]     # live nodes keep their text order


class ChunkEncoder:
    """Chunk texts -> tuples of ids, for one tokenizer's merges (byte_ids: the id of each byte 0..255)."""

    def __init__(self, merges, byte_ids, tokens):
        self.merges, self.byte_table = merges, bytes(byte_ids)   # bytes.translate maps bytes to ids in C
        joinable, joined = np.zeros((256, 256), bool), np.frombuffer(b"\xfe".join(tokens), np.uint8)
        joinable[joined[:-1], joined[1:]] = True
        # cut[x, y]: bytes x, y stand side by side in no token, so no merge ever joins them. No cut before a
        # UTF-8 continuation byte (0x80-0xBF), which would be exact but makes many one-byte pieces (whole
        # characters are fewer, still well-cached pieces), nor next to 0xFE and 0xFF, never in UTF-8 text,
        # which encode_many uses as separators.
        self.cut = ~joinable
        self.cut[:, 0x80:0xC0] = self.cut[0xFE:] = self.cut[:, 0xFE:] = False
        self.token_table = {text: self.encode_piece(t) for t in (tokens if TOKEN_TABLE else ())
                            if (text := t.decode("utf-8", "ignore")).encode("utf-8") == t}   # valid UTF-8
        self.pieces, self.cache = {}, {}  # piece bytes -> ids; chunk text -> ids (for encode_ordinary)

    def encode_piece(self, piece):
        return tuple(encode_chunk(list(piece.translate(self.byte_table)), self.merges))

    def encode_many(self, chunks):
        """The ids of each chunk in the list `chunks`. A chunk that spells a token is looked up; the others
        are cut (all at once, in numpy) where no merge can ever join, and their pieces encoded."""
        out = list(map(self.token_table.get, chunks))
        data = np.frombuffer(b"\xfe".join([c.encode("utf-8") for c, ids in zip(chunks, out) if ids is None]),
                             np.uint8)     # 0xFE ends a chunk, 0xFF (inserted at each cut) ends a piece
        cuts = np.flatnonzero(self.cut[data[:-1], data[1:]]) + 1 if CUT_UNJOINABLE else []
        split = [chunk.split(b"\xff") for chunk in np.insert(data, cuts, 0xFF).tobytes().split(b"\xfe")]
        pieces = self.pieces
        pieces.update((p, self.encode_piece(p)) for p in set(chain.from_iterable(split)).difference(pieces))
        encoded = iter([tuple(chain.from_iterable(map(pieces.__getitem__, parts))) for parts in split])
        return [next(encoded) if ids is None else ids for ids in out]


# --- The tokenizer ---------------------------------------------------------------------------

class Tokenizer:
    """minbpe-style byte-level BPE. pattern: "gpt4", "gpt2", None (no split) or a custom split regex
    (which must match every character: text it skips is lost). special_tokens: {str: id}, or a list of
    strings numbered right after the merges (after training, too)."""

    def __init__(self, pattern="gpt4", special_tokens=None):
        if pattern not in PATTERNS and regex.fullmatch(r"[a-z0-9_]+", pattern):   # a name, not a regex
            raise ValueError(f"unknown pattern {pattern!r}: use 'gpt4', 'gpt2', None or a split regex.")
        self._set_pattern(PATTERNS.get(pattern, pattern))
        self.byte_ids, self.merges = list(range(256)), {}   # ids of the bytes (GPT-2: permuted); (a, b) -> id
        self.register_special_tokens(special_tokens or {})

    def _set_pattern(self, pattern):
        self.pattern = pattern or None
        self.compiled_pattern = regex.compile(pattern) if pattern else None
        self._bmp_pattern = bmp_twin(pattern)

    def register_special_tokens(self, special_tokens):
        """special_tokens: {str: id} (ids past the merges) or a list of strings, numbered after the merges."""
        first, inverse = 256 + len(self.merges), {}
        names = [] if isinstance(special_tokens, dict) else list(special_tokens)
        if twice := [s for s in names if names.count(s) > 1]:
            raise ValueError(f"special token {twice[0]!r} is given twice.")
        if not isinstance(special_tokens, dict):
            special_tokens = {s: first + k for k, s in enumerate(names)}
        for s, i in special_tokens.items():
            if not isinstance(s, str) or not s or "\n" in s or "\r" in s:
                raise ValueError(f"special token {s!r}: must be a non-empty string without line breaks.")
            if type(i) is not int or i < first:
                raise ValueError(f"special token {s!r} has id {i!r}: not an id, or one a merge already uses")
            if i in inverse:
                raise ValueError(f"special tokens {inverse[i]!r} and {s!r} both have id {i}.")
            inverse[i] = s
        self.special_tokens, self.inverse_special_tokens = dict(special_tokens), inverse
        self._pending_special = names     # tokens given by name are numbered again after training
        self.vocab = {i: bytes([b]) for b, i in enumerate(self.byte_ids)}
        for (a, b), i in self.merges.items():
            self.vocab[i] = self.vocab[a] + self.vocab[b]
        self.vocab.update((i, s.encode("utf-8")) for s, i in self.special_tokens.items())
        self._encoder = None              # built on first use: it depends on the merges only

    @property
    def n_vocab(self):
        return len(self.vocab)

    def split(self, text):
        """The chunks of the textbook's split (by the `re` twin where it is exact)."""
        if self.compiled_pattern is None:
            return [text] if text else []
        twin = self._bmp_pattern
        fast = twin is not None and (text.isascii() or not BEYOND_BMP.search(text))
        return (twin if fast else self.compiled_pattern).findall(text)

    def train(self, text, vocab_size, verbose=False, progress=False):
        """Learn vocab_size - 256 merges from text: exactly textbook_train's."""
        if not 256 <= vocab_size <= MAX_VOCAB:
            raise ValueError(f"vocab_size must be at least 256 and at most {MAX_VOCAB:,}, got {vocab_size}.")
        if not self._pending_special and any(i < vocab_size for i in self.special_tokens.values()):
            raise ValueError(f"special token ids collide with the vocabulary 0..{vocab_size - 1}.")
        chunk_counts = Counter(self.split(text))           # distinct chunks, in order of first appearance
        from tqdm import tqdm
        with tqdm(total=vocab_size - 256, unit="merge", desc="training", disable=not progress) as bar:
            def report(pair, new_id, count):
                bar.update(1)
                if verbose:
                    print(f"merge {new_id - 255}/{vocab_size - 256}: {pair} -> {new_id} ({count} times)")
            learned = learn_merges([c.encode("utf-8") for c in chunk_counts], list(chunk_counts.values()),
                                   vocab_size - 256, progress=report if verbose or progress else None)
        if len(learned) < vocab_size - 256:
            warnings.warn(f"no pairs left to merge after {len(learned)} merges: the vocabulary stops at "
                          f"{256 + len(learned)} tokens instead of {vocab_size}.", stacklevel=2)
        self.byte_ids, self.merges = list(range(256)), dict(learned)
        self.register_special_tokens(self._pending_special or self.special_tokens)
        return self

    def encode_ordinary(self, text):
        """Encode text, treating special-token strings as ordinary text."""
        if self._encoder is None:
            tokens = [t for i, t in self.vocab.items() if i not in self.inverse_special_tokens]
            self._encoder = ChunkEncoder(self.merges, self.byte_ids, tokens)
        if self.compiled_pattern is None or not CACHE_CHUNKS:
            return list(chain.from_iterable(self._encoder.encode_many(self.split(text))))
        cache = self._encoder.cache                       # a text repeats most of its chunks
        if new := list(set(chunks := self.split(text)).difference(cache)):
            with paused_gc():
                cache.update(zip(new, self._encoder.encode_many(new)))
        return list(chain.from_iterable(map(cache.__getitem__, chunks)))

    def encode(self, text, allowed_special="none_raise"):
        """allowed_special: "all", "none" (specials are ordinary text), "none_raise" (raise if the text
        contains one; the default, like tiktoken), or a set of special-token strings to honour."""
        if allowed_special == "none_raise" and (found := [s for s in self.special_tokens if s in text]):
            raise ValueError(f"text holds special token {found[0]!r}: allowed_special='all' or 'none'?")
        if allowed_special in ("none", "none_raise"):
            return self.encode_ordinary(text)
        if allowed_special != "all" and not isinstance(allowed_special, (set, frozenset, list, tuple)):
            raise ValueError(f"allowed_special={allowed_special!r}: use 'all', 'none', 'none_raise' or a set")
        special = {s: i for s, i in self.special_tokens.items()
                   if allowed_special == "all" or s in allowed_special}
        # Longest first, so that where one special token holds another, the longer one wins.
        pattern = "(" + "|".join(regex.escape(s) for s in sorted(special, key=len, reverse=True)) + ")"
        ids = []
        for k, part in enumerate(regex.split(pattern, text) if special else [text]):
            ids += [special[part]] if k % 2 else self.encode_ordinary(part)
        return ids

    def decode_single_token_bytes(self, i):   # tiktoken's name for the bytes of token i
        return self.vocab[i]

    def decode(self, ids):
        try:
            return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is not in this tokenizer's vocabulary.") from None

    @classmethod
    def from_tiktoken(cls, encoding):
        """A Tokenizer giving exactly the ids of a tiktoken Encoding (or its name, e.g. "gpt2")."""
        import tiktoken
        enc = tiktoken.get_encoding(encoding) if isinstance(encoding, str) else encoding
        ranks, tok = enc._mergeable_ranks, cls(pattern=enc._pat_str)
        tok.byte_ids = [ranks.get(bytes([b]), -1) for b in range(256)]
        if sorted(tok.byte_ids) != list(range(256)) or sorted(ranks.values()) != list(range(len(ranks))):
            raise ValueError(f"tiktoken encoding {enc.name!r}: bytes must have ranks 0..255, and no gaps.")
        # Each multi-byte token t was made from the two parts that BPE with lower ranks leaves of t.
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            parts = _tiktoken_bpe(ranks, token, max_rank=rank) if len(token) > 1 else ()
            if len(parts) == 2:
                tok.merges[(ranks[parts[0]], ranks[parts[1]])] = rank
            elif parts:
                raise ValueError(f"tiktoken encoding {enc.name!r}: token {token!r} is not a merge of two.")
        tok.register_special_tokens(dict(enc._special_tokens))
        return tok

    def to_tiktoken(self, name="bpe"):
        """A tiktoken Encoding serving these merges, which it must rebuild by its own rule (the neighbours
        whose joined bytes have the lowest rank join first): we check every merge and refuse if not."""
        import tiktoken
        ranks = {t: i for i, t in self.vocab.items() if i not in self.inverse_special_tokens}
        for (a, b), i in self.merges.items():
            if _tiktoken_bpe(ranks, self.vocab[i], max_rank=i) != [self.vocab[a], self.vocab[b]] \
                    or ranks[self.vocab[i]] != i:
                raise ValueError(f"tiktoken's lowest-rank rule would not build token {i} ({self.vocab[i]!r}) "
                                 f"from {a} and {b}: tiktoken cannot serve this vocabulary exactly.")
        return tiktoken.Encoding(name=name, pat_str=self.pattern or r"[\s\S]+", mergeable_ranks=ranks,
                                 special_tokens=dict(self.special_tokens))

    def to_dict(self):
        """The whole tokenizer as plain str, int, list and dict values, for a checkpoint to carry."""
        return {"pattern": self.pattern or "", "byte_ids": list(self.byte_ids),
                "merges": [[a, b] for a, b in self.merges], "special_tokens": dict(self.special_tokens)}

    @classmethod
    def from_dict(cls, d):
        """The tokenizer that to_dict() gave, checked as a .model file is."""
        try:
            lines = _model_lines(d)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"the tokenizer dict is not a valid tokenizer ({e!r}).") from None
        return cls()._load_lines(lines, "the tokenizer dict")

    def save(self, file_prefix):
        """Write file_prefix.model (to load) and file_prefix.vocab (to read), atomically."""
        assert list(self.merges.values()) == list(range(256, 256 + len(self.merges))), "merge ids in order"
        model = "".join(line + "\n" for line in _model_lines(self.to_dict()))
        parents = {i: pair for pair, i in self.merges.items()}
        show = {i: "[" + "".join(c if unicodedata.category(c)[0] != "C" else f"\\u{ord(c):04x}"   # printable
                                 for c in token.decode("utf-8", errors="replace")) + "]"
                for i, token in self.vocab.items()}
        vocab = "".join((f"{show[parents[i][0]]}{show[parents[i][1]]} -> " if i in parents else "")
                        + f"{show[i]} {i}\n" for i in sorted(self.vocab))
        os.makedirs(os.path.dirname(os.path.abspath(file_prefix)), exist_ok=True)
        for path, text in ((file_prefix + ".model", model), (file_prefix + ".vocab", vocab)):
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(path + ".tmp", path)

    def load(self, model_file):
        """Read a .model file written by save() or by minbpe (v1); ValueError naming the file and line."""
        path = str(model_file)
        if not path.endswith(".model"):
            raise ValueError(f"{path}: expected a .model file.")
        return self._load_lines(read_text(path).split("\n"), path)

    def _load_lines(self, lines, source):
        try:
            pattern, special, self.byte_ids, self.merges = _parse_model(lines)
            self._set_pattern(pattern)
            self.register_special_tokens(special)
        except regex.error as e:
            raise ValueError(f"{source} is not a valid tokenizer (line 2: the split pattern: {e}).") from None
        except ValueError as e:
            raise ValueError(f"{source} is not a valid tokenizer ({e}).") from None
        return self


def _model_lines(d):
    """to_dict()'s d as a .model file's lines: "minbpe v1" (minbpe's), or "bpe v2" with the bytes' ids."""
    identity = list(d["byte_ids"]) == list(range(256))
    lines = ["minbpe v1" if identity else "bpe v2", d["pattern"], str(len(d["special_tokens"]))]
    lines += [f"{s} {i}" for s, i in d["special_tokens"].items()]
    lines += [] if identity else [" ".join(map(str, d["byte_ids"]))]
    return lines + [f"{a} {b}" for a, b in d["merges"]]


def _parse_model(lines):
    """The lines of a .model file -> (pattern, special tokens, byte ids, merges); ValueError naming a line."""
    def numbers(n, line, count, what):
        if len(line.split()) != count or not all(f.isascii() and f.isdigit() for f in line.split()):
            raise ValueError(f"line {n}: {what} {line[:40]!r} is not {count} number(s)")
        return [int(f) for f in line.split()]

    if lines[0] not in ("minbpe v1", "bpe v2"):
        raise ValueError(f"line 1: unknown header {lines[0][:40]!r}, expected 'minbpe v1' or 'bpe v2'")
    [n_special] = numbers(min(len(lines), 3), (lines + ["", ""])[2], 1, "the number of special tokens")
    special, end = {}, 3 + n_special + (lines[0] == "bpe v2")      # the line before the merges
    if len(lines) < end:
        raise ValueError(f"line {len(lines)}: the file ends before its special tokens (and byte ids)")
    for n, line in enumerate(lines[3:3 + n_special], 4):
        s, _, i = line.rpartition(" ")
        if s in special:
            raise ValueError(f"line {n}: special token {s!r} is repeated")
        [special[s]] = numbers(n, i, 1, "the special token's id")
    byte_ids = numbers(end, lines[end - 1], 256, "the byte ids") if lines[0] == "bpe v2" else list(range(256))
    if sorted(byte_ids) != list(range(256)):
        raise ValueError(f"line {end}: the byte ids are not a permutation of 0..255")
    merges = {}
    for n, line in enumerate(lines[end:], end + 1):
        if line.strip():
            a, b = numbers(n, line, 2, "the merge")
            if max(a, b) >= 256 + len(merges):
                raise ValueError(f"line {n}: a merge must be two ids made before it, got {line[:40]!r}")
            if (a, b) in merges:
                raise ValueError(f"line {n}: merge ({a}, {b}) is repeated")
            merges[(a, b)] = 256 + len(merges)
    return lines[1], special, byte_ids, merges


def _tiktoken_bpe(ranks, token, max_rank):
    """Split `token` by BPE using only merges ranked below max_rank (tiktoken's rule: lowest-ranked join)."""
    parts = [bytes([b]) for b in token]
    while True:
        rank, i = min(((ranks.get(x + y, max_rank), i) for i, (x, y) in enumerate(zip(parts, parts[1:]))),
                      default=(max_rank, 0))
        if rank >= max_rank:
            return parts
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


# --- Command line ----------------------------------------------------------------------------

def read_text(path):
    """The UTF-8 text of a file; ValueError naming the first byte that is not text."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file.")
    with open(path, "rb") as f:
        data = f.read()
    if b"\x00" in data:
        raise ValueError(f"{path} looks binary, not text (NUL byte at offset {data.index(0)}).")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (bad byte at offset {e.start}).") from None


def check_output(path, inputs=()):
    """Refuse, before any work is done, an output path that is one of the inputs or cannot be written."""
    for source in inputs:
        same = os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source)
        if same or os.path.abspath(path) == os.path.abspath(source):
            raise ValueError(f"{path} would overwrite the input {source}: choose another output (-o).")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        why = "it is a folder" if os.path.isdir(path) else f"{folder} is not a writable folder"
        raise ValueError(f"cannot write {path}: {why}.")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="?", default="manual.txt", help="UTF-8 training text")
    p.add_argument("vocab_size", nargs="?", type=int, default=1024, help="256 + number of merges")
    p.add_argument("--pattern", choices=["gpt4", "gpt2", "none"], default="gpt4",
                   help="split regex before BPE; none = classic BPE over the raw bytes")
    p.add_argument("--special", action="append", default=[],
                   help="special token to add after the merges, e.g. '<|endoftext|>' (repeatable)")
    p.add_argument("-o", "--output", help="output prefix (default: the text's path without extension)")
    p.add_argument("--load", help="encode with this .model instead of training (the text or --encode)")
    p.add_argument("--encode", help="with --load: the text to encode")
    args = p.parse_args(argv)
    try:
        if args.load:
            tok = Tokenizer().load(args.load)
            text = args.encode if args.encode is not None else read_text(args.text)
            print(" ".join(map(str, tok.encode(text, allowed_special="all"))))
            return
        prefix = args.output or os.path.splitext(args.text)[0]
        for path in (prefix + ".model", prefix + ".vocab"):
            check_output(path, [args.text])
        tok, text = Tokenizer(args.pattern, special_tokens=args.special or None), read_text(args.text)
        t0 = time.perf_counter()
        tok.train(text, args.vocab_size, progress=True)
        seconds = time.perf_counter() - t0
        tok.save(prefix)
        ids, n_bytes = tok.encode(text, allowed_special="all"), len(text.encode())
        if tok.decode(ids) != text:
            raise RuntimeError("round trip failed: decode(encode(text)) != text (a bug, please report it).")
        longest = sorted(tok.merges.values(), key=lambda i: len(tok.vocab[i]), reverse=True)[:10]
        n, rate = len(tok.merges), len(tok.merges) / max(seconds, 1e-9)
        print(f"trained {n} merges on {n_bytes:,} bytes in {seconds:.2f} s ({rate:,.0f} merges/s)"
              f"\nsaved {prefix}.model and {prefix}.vocab\n"
              f"round trip ok: {len(ids):,} tokens, {n_bytes / max(len(ids), 1):.2f} bytes per token\n"
              f"longest tokens: " + ", ".join(repr(tok.decode([i])) for i in longest))
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
