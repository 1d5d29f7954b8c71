"""Byte-level BPE tokenizer, minbpe's interface: exact to the textbook algorithm, and fast enough to train
on megabytes in seconds.

    python bpe.py manual.txt 1024                 # train, save manual.model / manual.vocab, check round trip
    python bpe.py manual.txt 4096 --pattern gpt2 --special '<|endoftext|>' -o out/mytok
    python bpe.py --load manual.model --encode "Hello world"     # print the ids of a text

    from bpe import Tokenizer
    tok = Tokenizer("gpt4").train(text, vocab_size=1024)   # split pattern "gpt4", "gpt2" or None (raw bytes)
    ids = tok.encode("hello world"); assert tok.decode(ids) == "hello world"
    gpt2 = Tokenizer.from_tiktoken("gpt2")        # same ids as tiktoken.get_encoding("gpt2")

Read top to bottom: the textbook algorithm (the reference), then the fast trainer and encoder, which return
exactly its answers, then the Tokenizer, save/load and the command line.
"""
import argparse
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
from contextlib import contextmanager
from itertools import chain, compress, repeat
from operator import getitem

import numpy as np
import regex

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "none": None, None: None}


# ---------------------------------------------------------------------------------------------
# The textbook algorithm (minbpe's): the reference that everything below is proven against
# ---------------------------------------------------------------------------------------------

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


def textbook_split(text, pattern):
    """The chunks BPE works on, never merged across: the matches of the split regex, or the whole text."""
    return regex.findall(pattern, text) if pattern else ([text] if text else [])


def textbook_train(text, vocab_size, pattern=GPT4_PATTERN):
    """Merges {(a, b): new_id}: count every pair in every chunk, merge the most frequent one everywhere,
    repeat. Ties go to the first of the most frequent pairs in text order (max() over the dict)."""
    chunks = [list(chunk.encode("utf-8")) for chunk in textbook_split(text, pattern)]
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
    for chunk in textbook_split(text, pattern):
        ids = list(chunk.encode("utf-8"))
        while len(ids) >= 2:
            pair = min(get_stats(ids), key=lambda p: merges.get(p, float("inf")))
            if pair not in merges:
                break
            ids = merge(ids, pair, merges[pair])
        out.extend(ids)
    return out


# ---------------------------------------------------------------------------------------------
# Speed paths. Each shortcut below returns exactly the textbook's answer; the knobs switch them off one at a
# time (test_all.py checks every setting against the textbook; `bench.py tokenizer --ablate` times them).
# ---------------------------------------------------------------------------------------------
BULK_MIN = 300              # merges with this many places (or more) run in numpy
RARE = 8                    # pairs rarer than this get a count but no place list, until one might win
PAUSE_GC = True             # no cycle collection during training
CACHE_CHUNKS = True         # encoding remembers the ids of each distinct chunk
TOKEN_TABLE = True          # a chunk that spells a token is looked up, not encoded
CUT_UNJOINABLE = True       # encoding cuts chunks between bytes that no token holds side by side
LONG_CHUNK = 64             # chunks longer than this encode with a heap
NEVER = sys.maxsize         # "merge id" of a pair that is not a merge
MASK = (1 << 32) - 1        # training keys a pair (a, b) as a << 32 | b: ints hash faster than tuples
MAX_VOCAB = 2**31 - 1       # ids below this fit the pair keys

# tiktoken's spellings of the GPT-2 and GPT-4 patterns (from_tiktoken keeps them, save() writes them).
TIKTOKEN_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
TIKTOKEN_CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+"""
                           r"""| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
TIKTOKEN_PATTERNS = (TIKTOKEN_GPT2_PATTERN, TIKTOKEN_CL100K_PATTERN)

# On ASCII text \p{L} is [A-Za-z], \p{N} is [0-9] and \s is [\t-\r ]. So spelled, the built-in patterns run
# in Python's `re` (which has no \p{..}), which splits ASCII much faster than `regex`.
ASCII_CLASSES = ((r"\s\p{L}\p{N}", r"\t-\r A-Za-z0-9"), (r"\p{L}\p{N}", "A-Za-z0-9"), (r"\p{L}", "[A-Za-z]"),
                 (r"\p{N}", "[0-9]"), (r"\S", r"[^\t-\r ]"), (r"\s", r"[\t-\r ]"))

# Mixed text (Chinese with code and formulas) takes the twin on its long ASCII stretches. A stretch starts
# and ends at a space that follows a non-space: no chunk holds that pair of characters (in these patterns a
# space only leads a chunk or sits in a run of whitespace), so each side splits exactly as in the whole
# text. re's \S is narrower than regex's (it calls \x1c-\x1f whitespace): a safe direction.
ASCII_STRETCH = re.compile(r"(?<=\S) [\x00-\x7f]{64,}(?<=\S)(?= )")


def ascii_twin(pattern):
    """`re` twin of a built-in or tiktoken split pattern, exact on ASCII text; None for other patterns and
    on Python < 3.11, whose `re` lacks possessive quantifiers."""
    if pattern not in (GPT2_PATTERN, GPT4_PATTERN) + TIKTOKEN_PATTERNS:
        return None
    for unicode_class, ascii_class in ASCII_CLASSES:
        pattern = pattern.replace(unicode_class, ascii_class)
    try:
        return re.compile(pattern)
    except re.error:
        return None


def compile_split(pattern):
    """-> (the compiled split pattern, its `re` twin for ASCII text or None); (None, None) for no split."""
    if not pattern:
        return None, None
    return regex.compile(pattern), ascii_twin(pattern)


def split_text(text, compiled, twin):
    """textbook_split's chunks, with ASCII text and long ASCII stretches split by the `re` twin."""
    if compiled is None:
        return [text] if text else []
    if twin is None:
        return compiled.findall(text)
    if text.isascii():
        return twin.findall(text)
    chunks, start = [], 0
    for stretch in ASCII_STRETCH.finditer(text):
        chunks += compiled.findall(text[start:stretch.start()])
        chunks += twin.findall(stretch.group())
        start = stretch.end()
    return chunks + compiled.findall(text[start:])


# ---------------------------------------------------------------------------------------------
# Fast training
# ---------------------------------------------------------------------------------------------
# Why it learns the textbook's merges. Identical chunks are trained once, weighted by how often they occur:
# every pair count is the same sum. The distinct chunks lie side by side, in order of first appearance, in
# one doubly linked list of tokens (node = byte position), so positions order pairs as the textbook's dict
# does. Each pair keeps its count and the ascending positions where it occurs; a merge visits only those
# places and changes only the counts of the pairs around them, which is all that a recount would change.
# A heap ordered by (-count, first position) gives the most frequent pair, ties to the leftmost. Counts only
# fall and first occurrences only move right (new pairs all contain the new token), so a stale heap entry
# is never better than the truth: it is refreshed when popped. And since counts never grow, a pair too
# rare to win yet needs no list of places until the best count falls to its own (RARE).

def learn_merges(chunks, counts, num_merges, first_id=256, progress=None):
    """Merges over the byte strings `chunks` (distinct, in order of first appearance) occurring `counts`
    times each: [((a, b), new_id), ...], at most num_merges (fewer if pairs run out). progress(pair, new_id,
    count), if given, is called after each merge."""
    nodes, views = _link_chunks(chunks, counts)
    tok, nxt = nodes[0], nodes[1]
    # pair_count holds every pair's count, where the ascending positions of the pairs that might win: most
    # pairs occur once or twice and never do, so those rarer than `rare` get no place list, until they might.
    rare = RARE
    pair_count, where = _index_pairs(views, rare)
    scanned = {}                          # pair -> index in where[pair] of its first live occurrence

    def first_position(pair):
        """Position of the pair's first live occurrence (None if none is left)."""
        a, b = pair >> 32, pair & MASK
        positions = where[pair]
        for k in range(scanned.get(pair, 0), len(positions)):
            i = positions[k]
            if tok[i] == a:
                j = nxt[i]
                if j >= 0 and tok[j] == b:
                    scanned[pair] = k
                    return i
        scanned[pair] = len(positions)
        return None

    heap = _heap_of(pair_count, where)
    merges = []
    with _gc_paused():
        for new_id in range(first_id, first_id + num_merges):
            pair = _pop_best(heap, pair_count, first_position, tok, nxt)
            if rare > 1 and (pair is None or pair_count[pair] < rare):   # an unlisted pair might tie or win
                rare = 1
                pair_count, where = _index_pairs(views, rare)
                scanned.clear()
                heap = _heap_of(pair_count, where)
                pair = _pop_best(heap, pair_count, first_position, tok, nxt)
            if pair is None:
                break
            count = pair_count[pair]
            merges.append(((pair >> 32, pair & MASK), new_id))
            if len(where[pair]) >= BULK_MIN:
                created = _apply_merge_bulk(pair, new_id, *views, pair_count, where, rare)
            else:
                created = _apply_merge(pair, new_id, *nodes, pair_count, where, rare)
            if progress is not None:
                progress(merges[-1][0], new_id, count)
            del pair_count[pair], where[pair]
            scanned.pop(pair, None)
            for new_pair in created:      # new pairs all contain new_id: pushed with their final counts
                heapq.heappush(heap, (-pair_count[new_pair], where[new_pair][0], new_pair))
    return merges


def _link_chunks(chunks, counts):
    """Lay the chunks side by side as one doubly linked list (node i = byte i of the concatenation):
    -> (nodes, views): arrays tok, nxt, prv (-1: no neighbour; chunks never merge across their border) and
    weight, which Python reads fast, and numpy views of the same memory for merges in bulk."""
    lengths = np.array([len(c) for c in chunks], dtype=np.int64)
    n = int(lengths.sum())
    tok = np.frombuffer(b"".join(chunks), dtype=np.uint8).astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    nxt, prv = np.arange(1, n + 1, dtype=np.int64), np.arange(-1, n - 1, dtype=np.int64)
    if n:
        nxt[starts + lengths - 1] = -1
        prv[starts] = -1
    weight = np.repeat(np.asarray(counts, dtype=np.int64), lengths)
    nodes = [array("q", x.tobytes()) for x in (tok, nxt, prv, weight)]
    return nodes, [np.frombuffer(node, dtype=np.int64) for node in nodes]


def _index_pairs(views, min_count):
    """Count every adjacent pair of live tokens (a dead node has tok -1) with numpy: -> pair_count for all
    pairs, and where (ascending positions) for those occurring min_count times or more: a numpy array for
    pairs merged in bulk, a list for those walked in Python."""
    tok, nxt, weight = views[0], views[1], views[3]
    pos = np.flatnonzero(tok >= 0)
    pos = pos[nxt[pos] >= 0]
    a, b = tok[pos], tok[nxt[pos]]
    order = np.argsort(a << 32 | b, kind="stable")      # stable: positions stay ascending within a pair
    pos, keys = pos[order], (a[order] << 32) | b[order]
    first = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1]))) if len(keys) else pos[:0]
    totals = np.add.reduceat(weight[pos], first, dtype=np.int64).tolist() if len(keys) else []
    bounds = first.tolist() + [len(keys)]
    pair_count, where = {}, {}
    for key, total, i, j in zip(keys[first].tolist(), totals, bounds, bounds[1:]):
        pair_count[key] = total
        if total >= min_count:
            where[key] = pos[i:j] if j - i >= BULK_MIN else pos[i:j].tolist()
    return pair_count, where


def _heap_of(pair_count, where):
    """The heap of every listed pair: (-count, first position, pair), so the top is the next merge."""
    heap = [(-pair_count[pair], int(positions[0]), pair) for pair, positions in where.items()]
    heapq.heapify(heap)
    return heap


def _pop_best(heap, pair_count, first_position, tok, nxt):
    """Pop the most frequent pair, ties to the earliest first occurrence. An entry's position is at or
    before the pair's first live occurrence (positions only die), so an entry whose count is right and
    whose position is live is exact; any other is refreshed and pushed back."""
    while heap:
        neg_count, pos, pair = heapq.heappop(heap)
        count = pair_count.get(pair, 0)
        if count == -neg_count:
            j = nxt[pos]
            if j >= 0 and tok[pos] == pair >> 32 and tok[j] == pair & MASK:
                return pair
            heapq.heappush(heap, (neg_count, first_position(pair), pair))
        elif count > 0:
            heapq.heappush(heap, (-count, pos, pair))    # the old position is still a lower bound
    return None


def _apply_merge(pair, new_id, tok, nxt, prv, weight, pair_count, where, rare):
    """Merge every live occurrence of `pair`, left to right, and update the neighbour pairs' counts and
    places. -> the new pairs (all hold new_id) occurring `rare` times or more, which get a place list."""
    a, b = pair >> 32, pair & MASK
    # Places of the new pairs (x, new) and (new, y), grouped by x and y: counts are settled per group.
    lefts, rights = defaultdict(list), defaultdict(list)
    for i in where[pair]:                 # ascending, so this is left to right with no overlap
        if tok[i] != a:
            continue                      # stale: node absorbed or already merged into something else
        j = nxt[i]
        if j < 0 or tok[j] != b:
            continue
        left, right = prv[i], nxt[j]
        if left >= 0:                     # (x, a) becomes (x, new)
            x = tok[left]
            if x == new_id:               # (new, a) was made a moment ago by the previous merge, at `left`:
                rights[a].pop()           # it is gone again, but (b, a) lost that occurrence for good
                pair_count[b << 32 | a] -= weight[i]
            lefts[x].append(left)
        if right >= 0:                    # (b, y) becomes (new, y)
            y = tok[right]
            rights[y].append(i)
            prv[right] = i
        tok[i] = new_id
        tok[j] = -1
        nxt[i] = right
    created = []
    for side, groups in ((0, lefts), (1, rights)):
        for other, places in groups.items():
            if not places:
                continue
            c = sum(map(weight.__getitem__, places)) if len(places) > 1 else weight[places[0]]
            if side:
                pair_count[b << 32 | other] -= c
                key = new_id << 32 | other
            else:
                if other != new_id:
                    pair_count[other << 32 | a] -= c
                key = other << 32 | new_id
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
        chained = np.zeros(len(pos), dtype=bool)
        chained[1:] = nx[:-1] == pos[1:]
        index = np.arange(len(pos))
        run_start = np.maximum.accumulate(np.where(chained, 0, index))
        keep = (index - run_start) % 2 == 0
        pos, nx = pos[keep], nx[keep]
    left, right, w = prv[pos], nxt[nx], weight[pos]
    # An occurrence whose left neighbour is the previous occurrence's merged node sees the new token there.
    after_merge = np.zeros(len(pos), dtype=bool)
    after_merge[1:] = right[:-1] == pos[1:]
    before_merge = np.zeros(len(pos), dtype=bool)
    before_merge[:-1] = after_merge[1:]
    chained = np.flatnonzero(after_merge)
    left[chained] = pos[chained - 1]
    has_left, has_right = left >= 0, right >= 0
    x = np.where(after_merge, new_id, tok[np.where(has_left, left, 0)])
    y = tok[np.where(has_right, right, 0)]
    # Old pairs lose these occurrences: (x, a) unless x is the new token, and (b, y).
    lost = has_left & ~after_merge
    keys = np.concatenate([x[lost] << 32 | a, b << 32 | y[has_right]])
    if len(keys):
        keys, inverse = np.unique(keys, return_inverse=True)
        deltas = np.zeros(len(keys), dtype=np.int64)
        np.add.at(deltas, inverse, np.concatenate([w[lost], w[has_right]]))
        for key, delta in zip(keys.tolist(), deltas.tolist()):
            pair_count[key] -= delta
    tok[pos] = new_id
    tok[nx] = -1
    nxt[pos] = right
    prv[right[has_right]] = pos[has_right]
    # New pairs: (x, new) at the left neighbour; (new, y) here unless the next occurrence merges y.
    gain = has_right & ~before_merge
    keys = np.concatenate([x[has_left] << 32 | new_id, new_id << 32 | y[gain]])
    places = np.concatenate([left[has_left], pos[gain]])
    weights = np.concatenate([w[has_left], w[gain]])
    if len(keys) == 0:
        return []
    order = np.argsort(keys, kind="stable")               # each side is ascending; (x, new) != (new, y)
    keys, places, weights = keys[order], places[order], weights[order]
    first = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    totals = np.add.reduceat(weights, first)
    pair_count.update(zip(keys[first].tolist(), totals.tolist()))
    # Within a key the places are ascending: each side lists them in text order (the stable sort keeps it),
    # and a key comes from one side only ((x, new) from the left, (new, y) from the right).
    listed = np.flatnonzero(totals >= rare)
    starts, ends = first[listed], np.append(first[1:], len(keys))[listed]
    created = keys[starts].tolist()
    places = places.tolist()
    where.update(zip(created, [places[i:j] for i, j in zip(starts.tolist(), ends.tolist())]))
    return created


@contextmanager
def _gc_paused():
    """Python's cycle collector off while training: it makes many small lists, none in a cycle, which the
    collector would otherwise walk again and again."""
    was_enabled = gc.isenabled()
    if PAUSE_GC:
        gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# ---------------------------------------------------------------------------------------------
# Fast encoding
# ---------------------------------------------------------------------------------------------
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
    n = len(ids)
    tok, nxt, prv = list(ids), list(range(1, n + 1)), list(range(-1, n - 1))
    nxt[-1] = -1
    heap = [(merges[p], i) for i, p in enumerate(zip(ids, ids[1:])) if p in merges]
    heapq.heapify(heap)
    while heap:
        new_id, i = heapq.heappop(heap)
        j = nxt[i] if tok[i] >= 0 else -1
        if j < 0 or merges.get((tok[i], tok[j])) != new_id:
            continue                      # stale entry
        tok[i], tok[j] = new_id, -1
        right = nxt[j]
        nxt[i] = right
        if right >= 0:
            prv[right] = i
            r = merges.get((new_id, tok[right]))
            if r is not None:
                heapq.heappush(heap, (r, i))
        left = prv[i]
        if left >= 0:
            r = merges.get((tok[left], new_id))
            if r is not None:
                heapq.heappush(heap, (r, left))
    out, i = [], 0
    while i >= 0:
        out.append(tok[i])
        i = nxt[i]
    return out


class _Cache(dict):
    """key -> ids; a miss calls compute(key), so that hits never leave C code."""

    def __init__(self, compute):
        super().__init__()
        self.compute = compute

    def __missing__(self, key):
        ids = self[key] = self.compute(key)
        return ids


class ChunkEncoder:
    """Chunk text -> tuple of ids, for one tokenizer's merges (byte_ids: the id of each byte 0..255)."""

    def __init__(self, merges, byte_ids, tokens):
        self.merges, self.byte_table = merges, bytes(byte_ids)   # bytes.translate maps bytes to ids in C
        joinable = bytearray(1 << 16)
        for token in tokens:
            for x, y in zip(token, token[1:]):
                joinable[x << 8 | y] = 1
        # unjoinable[x][y]: no cut before a UTF-8 continuation byte (0x80-0xBF), which would be exact but
        # makes many one-byte pieces; whole characters are fewer, still well-cached pieces.
        self.unjoinable = [bytes(0 if joinable[x << 8 | y] or 0x80 <= y < 0xC0 else 1 for y in range(256))
                           for x in range(256)]
        self.pieces = _Cache(lambda piece: tuple(encode_chunk(list(piece.translate(self.byte_table)),
                                                              merges)))
        self.token_table = {}
        for token in tokens if TOKEN_TABLE else ():
            try:
                self.token_table[token.decode("utf-8")] = self.pieces[token]
            except UnicodeDecodeError:
                pass
        self.pieces.clear()
        self.cache = _Cache(self.encode)

    def encode(self, chunk):
        ids = self.token_table.get(chunk)
        return tuple(self.encode_bytes(chunk.encode("utf-8"))) if ids is None else ids

    def encode_bytes(self, data):
        """The ids of one chunk's bytes, cut where no merge can ever join."""
        if len(data) < 8 or not CUT_UNJOINABLE:
            return self.pieces[data]
        cuts = compress(range(1, len(data)),              # found in C
                        map(getitem, map(self.unjoinable.__getitem__, data[:-1]), data[1:]))
        out, start = [], 0
        for k in cuts:
            out += self.pieces[data[start:k]]
            start = k
        out += self.pieces[data[start:]]
        return out


# ---------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------

class Tokenizer:
    """minbpe-style byte-level BPE. pattern: "gpt4", "gpt2", None (no split) or a custom split regex
    (which must match every character: text it skips is lost). special_tokens: {str: id}, or a list of
    strings numbered right after the merges."""

    def __init__(self, pattern="gpt4", special_tokens=None):
        if pattern in PATTERNS:
            pattern = PATTERNS[pattern]
        elif regex.fullmatch(r"[a-z0-9_]+", pattern):   # a name we do not know, not a regex
            raise ValueError(f"unknown pattern {pattern!r}: use 'gpt4', 'gpt2', None or a split regex.")
        self.pattern = pattern or None
        self.compiled_pattern, self._ascii_pattern = compile_split(self.pattern)
        self.byte_ids = list(range(256))  # the id of each raw byte (a permutation for GPT-2's ranks)
        self.merges = {}                  # (id, id) -> id, in merge order
        self.special_tokens, self.inverse_special_tokens = {}, {}
        self._pending_special = []        # special tokens given by name only: numbered after training
        self._rebuild_vocab()
        if isinstance(special_tokens, dict):
            self.register_special_tokens(special_tokens)
        elif special_tokens:
            self._pending_special = list(special_tokens)
            self._number_pending_special()

    def _rebuild_vocab(self):
        self.vocab = {i: bytes([b]) for b, i in enumerate(self.byte_ids)}
        for (a, b), i in self.merges.items():
            self.vocab[i] = self.vocab[a] + self.vocab[b]
        for s, i in self.special_tokens.items():
            self.vocab[i] = s.encode("utf-8")
        self._encoder = None              # built on first use: it depends on the merges only

    def _chunk_encoder(self):
        if self._encoder is None:
            tokens = [t for i, t in self.vocab.items() if i not in self.inverse_special_tokens]
            self._encoder = ChunkEncoder(self.merges, self.byte_ids, tokens)
        return self._encoder

    def _number_pending_special(self):
        repeated = {s for s in self._pending_special if self._pending_special.count(s) > 1}
        if repeated:
            raise ValueError(f"special token {sorted(repeated)[0]!r} is given twice.")
        next_id = 256 + len(self.merges)
        self.register_special_tokens({s: next_id + k for k, s in enumerate(self._pending_special)})

    def register_special_tokens(self, special_tokens):
        """special_tokens: dict str -> id (ids outside the merged vocabulary, one token each)."""
        ids = {}
        for s, i in special_tokens.items():
            if not isinstance(s, str) or not s or "\n" in s or "\r" in s:
                raise ValueError(f"special token {s!r}: must be a non-empty string without line breaks.")
            if type(i) is not int or i < 256 + len(self.merges):
                raise ValueError(f"special token {s!r} has id {i!r}, which a byte or merge already uses (or "
                                 f"is not an id); give special tokens ids from {256 + len(self.merges)} up.")
            if i in ids:
                raise ValueError(f"special tokens {ids[i]!r} and {s!r} both have id {i}.")
            ids[i] = s
        self.special_tokens = dict(special_tokens)
        self.inverse_special_tokens = {i: s for s, i in self.special_tokens.items()}
        self._rebuild_vocab()

    @property
    def n_vocab(self):
        return len(self.vocab)

    # ----- training -----
    def split(self, text):
        """The chunks BPE works on, as textbook_split gives them."""
        return split_text(text, self.compiled_pattern, self._ascii_pattern)

    def train(self, text, vocab_size, verbose=False, progress=False):
        """Learn vocab_size - 256 merges from text: exactly textbook_train's."""
        if not 256 <= vocab_size <= MAX_VOCAB:
            raise ValueError(f"vocab_size must be at least 256 (the single bytes) and at most {MAX_VOCAB:,}, "
                             f"got {vocab_size}.")
        if not self._pending_special and any(i < vocab_size for i in self.special_tokens.values()):
            raise ValueError(f"special token ids {sorted(self.special_tokens.values())} collide with the "
                             f"vocabulary 0..{vocab_size - 1} being trained; use ids from {vocab_size} up.")
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
        self._number_pending_special() if self._pending_special else self._rebuild_vocab()
        return self

    # ----- encoding / decoding -----
    def encode_ordinary(self, text):
        """Encode text, treating special-token strings as ordinary text."""
        encoder = self._chunk_encoder()
        if self.compiled_pattern is None:
            return list(encoder.encode_bytes(text.encode("utf-8")))
        encode = encoder.cache.__getitem__ if CACHE_CHUNKS else encoder.encode
        return list(chain.from_iterable(map(encode, self.split(text))))

    def encode(self, text, allowed_special="none_raise"):
        """allowed_special: "all", "none" (specials are ordinary text), "none_raise" (raise if the text
        contains one; the default, like tiktoken), or a set of special-token strings to honour."""
        if allowed_special in ("none", "none_raise"):
            found = [s for s in self.special_tokens if s in text]
            if found and allowed_special == "none_raise":
                raise ValueError(f"the text contains the special token {found[0]!r}; pass allowed_special="
                                 f"'all' (or a set) to encode it as one token, or 'none' for plain text.")
            return self.encode_ordinary(text)
        if allowed_special != "all" and not isinstance(allowed_special, (set, frozenset, list, tuple)):
            raise ValueError(f"allowed_special={allowed_special!r} is not understood: use 'all', 'none', "
                             f"'none_raise' or a set of special tokens.")
        special = {s: i for s, i in self.special_tokens.items()
                   if allowed_special == "all" or s in allowed_special}
        if not special:
            return self.encode_ordinary(text)
        # Longest first, so that where one special token holds another, the longer one wins.
        pattern = "(" + "|".join(regex.escape(s) for s in sorted(special, key=len, reverse=True)) + ")"
        ids = []
        for k, part in enumerate(regex.split(pattern, text)):
            if k % 2:
                ids.append(special[part])
            elif part:
                ids.extend(self.encode_ordinary(part))
        return ids

    def decode_single_token_bytes(self, i):
        """The bytes of token i (tiktoken's name for it)."""
        return self.vocab[i]

    def decode(self, ids):
        try:
            return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is not in this tokenizer's vocabulary.") from None

    # ----- tiktoken interop -----
    @classmethod
    def from_tiktoken(cls, encoding):
        """A Tokenizer giving exactly the ids of a tiktoken Encoding (or its name, e.g. "gpt2")."""
        import tiktoken
        enc = tiktoken.get_encoding(encoding) if isinstance(encoding, str) else encoding
        ranks, tok = enc._mergeable_ranks, cls(pattern=enc._pat_str)
        tok.byte_ids = [ranks.get(bytes([b]), -1) for b in range(256)]
        if sorted(tok.byte_ids) != list(range(256)) or sorted(ranks.values()) != list(range(len(ranks))):
            raise ValueError(f"tiktoken encoding {enc.name!r}: its merges cannot be rebuilt unless single "
                             f"bytes have ranks 0..255 and the ranks no gaps.")
        # Each multi-byte token t was made from the two parts that BPE with lower ranks leaves of t.
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            if len(token) > 1:
                parts = _tiktoken_bpe(ranks, token, max_rank=rank)
                if len(parts) != 2:
                    raise ValueError(f"tiktoken encoding {enc.name!r}: token {token!r} (rank {rank}) is not "
                                     f"the merge of two lower-ranked tokens.")
                tok.merges[(ranks[parts[0]], ranks[parts[1]])] = rank
        tok.register_special_tokens(dict(enc._special_tokens))
        return tok

    def to_tiktoken(self, name="bpe"):
        """A tiktoken Encoding serving these merges. tiktoken knows no merge list: it joins the neighbours
        whose joined bytes have the lowest rank. We check that this rule rebuilds every one of our merges
        (as from_tiktoken does), and refuse the vocabularies where it cannot."""
        import tiktoken
        ranks = {}
        for i, token in self.vocab.items():
            if i not in self.inverse_special_tokens:
                if token in ranks:
                    raise ValueError(f"tokens {ranks[token]} and {i} are both {token!r}; tiktoken needs one "
                                     f"id per byte string, so it cannot serve this vocabulary.")
                ranks[token] = i
        for (a, b), i in self.merges.items():
            if _tiktoken_bpe(ranks, self.vocab[i], max_rank=i) != [self.vocab[a], self.vocab[b]]:
                raise ValueError(f"tiktoken's lowest-rank rule would not build token {i} "
                                 f"({self.vocab[i]!r}) from tokens {a} and {b}, so tiktoken cannot serve "
                                 f"this vocabulary exactly.")
        return tiktoken.Encoding(name=name, pat_str=self.pattern or r"[\s\S]+", mergeable_ranks=ranks,
                                 special_tokens=dict(self.special_tokens))

    # ----- save / load -----
    def to_dict(self):
        """The whole tokenizer as plain str, int, list and dict values, for a checkpoint to carry."""
        return {"pattern": self.pattern or "", "byte_ids": list(self.byte_ids),
                "merges": [[a, b] for a, b in self.merges], "special_tokens": dict(self.special_tokens)}

    @classmethod
    def from_dict(cls, d):
        """The tokenizer that to_dict() gave, checked as a .model file is."""
        try:
            merges = [tuple(merge) for merge in d["merges"]]
            lines = _model_lines(d["pattern"], d["special_tokens"], d["byte_ids"], merges)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"the tokenizer dict is not a valid tokenizer ({e!r}).") from None
        return cls()._load_lines(lines, "the tokenizer dict")

    def save(self, file_prefix):
        """Write file_prefix.model (to load) and file_prefix.vocab (to read), atomically."""
        assert list(self.merges.values()) == list(range(256, 256 + len(self.merges))), "merge ids in order"
        lines = _model_lines(self.pattern or "", self.special_tokens, self.byte_ids, self.merges)
        _write_atomic(file_prefix + ".model", "\n".join(lines) + "\n")
        parents = {i: pair for pair, i in self.merges.items()}
        show = {i: f"[{render_token(token)}]" for i, token in self.vocab.items()}
        _write_atomic(file_prefix + ".vocab", "".join(
            (f"{show[parents[i][0]]}{show[parents[i][1]]} -> " if i in parents else "") + f"{show[i]} {i}\n"
            for i in sorted(self.vocab)))

    def load(self, model_file):
        """Read a .model file written by save() or by minbpe (v1). Raises ValueError naming the file and
        the first bad line if it is not one."""
        path = str(model_file)
        if not path.endswith(".model"):
            raise ValueError(f"{path}: expected a .model file.")
        return self._load_lines(read_text(path).split("\n"), path)

    def _load_lines(self, lines, source):
        try:
            pattern, special, byte_ids, merges = _parse_model(lines)
            self.pattern = pattern or None
            self.compiled_pattern, self._ascii_pattern = compile_split(self.pattern)
            self.byte_ids, self.merges, self._pending_special = byte_ids, merges, []
            self.register_special_tokens(special)
        except regex.error as e:
            raise ValueError(f"{source} is not a valid tokenizer (line 2: the split pattern does not "
                             f"compile: {e}).") from None
        except ValueError as e:
            raise ValueError(f"{source} is not a valid tokenizer ({e}).") from None
        return self


def _model_lines(pattern, special_tokens, byte_ids, merges):
    """The lines of a .model file: minbpe's "minbpe v1", or "bpe v2" (a line of byte ids added) where the
    single bytes do not have ids 0..255."""
    identity = list(byte_ids) == list(range(256))
    lines = ["minbpe v1" if identity else "bpe v2", pattern, str(len(special_tokens))]
    lines += [f"{s} {i}" for s, i in special_tokens.items()]
    lines += [] if identity else [" ".join(map(str, byte_ids))]
    return lines + [f"{a} {b}" for a, b in merges]


def _parse_model(lines):
    """The lines of a .model file -> (pattern, special tokens, byte ids, merges); ValueError naming a line."""
    def number(n, text, what):
        if not text.isdigit():
            raise ValueError(f"line {n}: {what} {text[:40]!r} is not a number")
        return int(text)

    if lines[0] not in ("minbpe v1", "bpe v2"):
        raise ValueError(f"line 1: unknown header {lines[0][:40]!r}, expected 'minbpe v1' or 'bpe v2'")
    if len(lines) < 3:
        raise ValueError(f"line {len(lines)}: the file ends before the number of special tokens")
    n_special, special, n = number(3, lines[2], "the number of special tokens"), {}, 4
    for n, line in enumerate(lines[3:3 + n_special], 4):
        s, _, i = line.rpartition(" ")
        if s in special:
            raise ValueError(f"line {n}: special token {s!r} is repeated")
        special[s] = number(n, i, "the special token's id")
    rest = list(enumerate(lines[3 + n_special:], 4 + n_special))
    if len(special) < n_special:
        raise ValueError(f"line {n}: the file ends before its {n_special} special tokens")
    byte_ids = list(range(256))
    if lines[0] == "bpe v2":
        n, line = rest.pop(0) if rest else (n, "")
        byte_ids = [number(n, x, "byte id") for x in line.split()]
        if sorted(byte_ids) != list(range(256)):
            raise ValueError(f"line {n}: the byte ids are not a permutation of 0..255")
    merges = {}
    for n, line in rest:
        if line.strip():
            a, b = [number(n, x, "merge id") for x in line.split()] if len(line.split()) == 2 else (-1, -1)
            if not (0 <= a < 256 + len(merges) and 0 <= b < 256 + len(merges)):
                raise ValueError(f"line {n}: a merge must be two ids made before it, got {line[:40]!r}")
            if (a, b) in merges:
                raise ValueError(f"line {n}: merge ({a}, {b}) is repeated")
            merges[(a, b)] = 256 + len(merges)
    return lines[1], special, byte_ids, merges


def _tiktoken_bpe(ranks, token, max_rank):
    """Split `token` by BPE using only merges ranked below max_rank (tiktoken's rule: lowest-ranked join)."""
    parts = [bytes([b]) for b in token]
    while True:
        joined = [(ranks.get(x + y, max_rank), i) for i, (x, y) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(joined, default=(max_rank, 0))
        if rank >= max_rank:
            return parts
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


def render_token(token):
    """Bytes -> printable text: invalid UTF-8 becomes U+FFFD, control characters become \\uXXXX."""
    s = token.decode("utf-8", errors="replace")
    return "".join(c if unicodedata.category(c)[0] != "C" else f"\\u{ord(c):04x}" for c in s)


def _write_atomic(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def read_text(path):
    """The UTF-8 text of a file; ValueError naming the first byte that is not text."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file.")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (bad byte at offset {e.start}).") from None
    if "\x00" in text:
        raise ValueError(f"{path} looks binary, not text (NUL byte at offset {data.index(0)}).")
    return text


def check_output(path, inputs=()):
    """Refuse, before any work is done, an output path that is one of the inputs or cannot be written."""
    for source in inputs:
        if os.path.abspath(path) == os.path.abspath(source) or (
                os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source)):
            raise ValueError(f"{path} would overwrite the input {source}: choose another output (-o).")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if os.path.isdir(path):
        raise ValueError(f"cannot write {path}: it is a folder.")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ValueError(f"cannot write {path}: {folder} is not a writable folder.")


def train_cli(args):
    prefix = args.output or os.path.splitext(args.text)[0]
    for path in (prefix + ".model", prefix + ".vocab"):
        check_output(path, [args.text])
    tok = Tokenizer(args.pattern, special_tokens=args.special or None)
    text = read_text(args.text)
    t0 = time.perf_counter()
    tok.train(text, args.vocab_size, progress=True)
    seconds = time.perf_counter() - t0
    tok.save(prefix)
    ids = tok.encode(text, allowed_special="all")
    if tok.decode(ids) != text:
        raise RuntimeError("round trip failed: decode(encode(text)) != text (a bug, please report it).")
    n_bytes = len(text.encode())
    print(f"trained {len(tok.merges)} merges on {n_bytes:,} bytes in {seconds:.2f} s "
          f"({len(tok.merges) / max(seconds, 1e-9):,.0f} merges/s)\nsaved {prefix}.model and {prefix}.vocab\n"
          f"round trip ok: {len(ids):,} tokens, {n_bytes / max(len(ids), 1):.2f} bytes per token")
    longest = sorted(tok.merges.values(), key=lambda i: len(tok.vocab[i]), reverse=True)[:10]
    print("longest tokens: " + ", ".join(repr(tok.decode([i])) for i in longest))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("text", nargs="?", default="manual.txt", help="UTF-8 training text")
    parser.add_argument("vocab_size", nargs="?", type=int, default=1024, help="256 + number of merges")
    parser.add_argument("--pattern", choices=["gpt4", "gpt2", "none"], default="gpt4",
                        help="split regex before BPE; none = classic BPE over the raw bytes")
    parser.add_argument("--special", action="append", default=[],
                        help="special token to add after the merges, e.g. '<|endoftext|>' (repeatable)")
    parser.add_argument("-o", "--output", help="output prefix (default: the text's path without extension)")
    parser.add_argument("--load", help="encode with this .model instead of training (the text or --encode)")
    parser.add_argument("--encode", help="with --load: the text to encode")
    args = parser.parse_args(argv)
    try:
        if args.load:
            tok = Tokenizer().load(args.load)
            text = args.encode if args.encode is not None else read_text(args.text)
            print(" ".join(map(str, tok.encode(text, allowed_special="all"))))
        else:
            train_cli(args)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
