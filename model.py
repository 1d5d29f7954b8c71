"""GPT-2, written to be read: the same function as HuggingFace's GPT2LMHeadModel, with its parameter names,
in the order data flows; then what the model-side scripts share (devices, tokenizers, checkpoints, checks).

    python model.py --init gpt2 --prompt "Hello, I'm a language model,"   # OpenAI's weights (downloads once)
    python model.py --ckpt log/model.pt --export-hf out/hf                # a checkpoint, for transformers
"""
import argparse
import contextlib
import math
import os
import pathlib
import re
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

# The four published GPT-2 sizes. All share block_size 1024 and the 50257-token BPE vocabulary.
GPT_SIZES = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),          # 124M parameters
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),   # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),      # 1558M
}
EOT = "<|endoftext|>"  # the special token that separates documents, and the exported models' eos


@dataclass
class GPTConfig:
    block_size: int = 1024       # longest context (number of learned position embeddings)
    vocab_size: int = 50257      # ids the tokenizer can produce
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0         # GPT-2 was trained with 0.1; pretraining from scratch here uses 0
    attn: str = "flash"          # "flash": F.scaled_dot_product_attention; "plain": explicit masked softmax
    vocab_multiple: int = 1      # pad embedding rows to a multiple (64: 50304, kinder to GPU kernels)
    layer_norm_epsilon: float = 1e-5

    @property
    def padded_vocab_size(self):
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    def __post_init__(self):  # every config passes here: the CLIs' flags and the checkpoints' dicts
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "vocab_multiple"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, not {getattr(self, name)!r}")
        for name, low, high in (("dropout", 0, 1), ("layer_norm_epsilon", 1e-12, 1)):
            if type(getattr(self, name)) not in (int, float) or not low <= getattr(self, name) < high:
                raise ValueError(f"{name} must be a number in [{low}, {high}), not {getattr(self, name)!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.attn not in ("flash", "plain"):
            raise ValueError(f"attn must be 'flash' or 'plain', not {self.attn!r}")


# --- The network -----------------------------------------------------------------------------
class KVCache:
    """Keys and values of the positions seen so far, per layer: a new token costs one position of compute."""

    def __init__(self, config, batch_size, device, dtype, max_len=None):
        shape = (config.n_layer, batch_size, config.n_head, max_len or config.block_size,
                 config.n_embd // config.n_head)   # (L, B, nh, T_max, hs)
        self.k = torch.empty(shape, device=device, dtype=dtype)  # not zeros: only written positions are read
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled; GPT.hidden_states advances it after all layers have written

    def update(self, layer, k, v):
        """Store this step's k, v (B, nh, T, hs) for `layer`; return all keys and values so far."""
        end = self.length + k.size(2)
        if end > self.k.size(3):
            raise ValueError(f"the KV cache is full ({self.k.size(3)} positions); crop and refill it")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reorder(self, rows, shared=0):
        """Row i continues from old row rows[i] (beam search); rows may repeat, drop or add rows. Only filled
        positions are copied, in place while the number of rows stays (no new buffers to fault in), and
        then not the first `shared` ones, equal in every row (a beam search's prompt)."""
        for name in ("k", "v"):
            old = getattr(self, name)
            new, start = (old, shared) if len(rows) == old.size(1) else \
                (old.new_empty((old.size(0), len(rows), *old.shape[2:])), 0)
            new[:, :, :, start:self.length] = old[:, rows, :, start:self.length]   # (the right side: a copy)
            setattr(self, name, new)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # query, key, value for all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.residual_scale_init = True
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.attn, self.layer_idx = config.attn, layer_idx

    def forward(self, x, kv_cache=None, attn_mask=None):
        """attn_mask (B or 1, 1, T, keys), True where a query may look, replaces the causal mask if given."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # q, k, v: (B, nh, T, hs)
        past = kv_cache.length if kv_cache is not None else 0
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)                          # (B, nh, past + T, hs)
        # Query i (at position past + i) sees keys 0 .. past + i; a single new query sees everything.
        # Flash takes a fresh causal block as is_causal, without a mask: that allows its fused kernels.
        if attn_mask is None and T > 1 and (past > 0 or self.attn == "plain"):
            attn_mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        causal = attn_mask is None and T > 1
        dropout = self.dropout if self.training else 0.0
        if self.attn == "flash":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p=dropout, is_causal=causal)
        else:  # the textbook computation, kept as a cross-check
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))         # (B, nh, T, past + T)
            if attn_mask is not None:
                att = att.masked_fill(~attn_mask, float("-inf"))
            att = F.dropout(F.softmax(att, dim=-1), p=dropout, training=self.training)
            y = att @ v                                                                # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.residual_scale_init = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        # GPT-2 used the tanh approximation of GELU ("gelu_new" in HuggingFace); one fused kernel here.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None, attn_mask=None):
        x = x + self.attn(self.ln_1(x), kv_cache, attn_mask)  # pre-norm residual blocks, as in GPT-2
        return x + self.mlp(self.ln_2(x))


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Pick the next id (B, 1) from last-position logits (B, V): greedy, top-k and/or nucleus (top-p)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth_best = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None:
        # Keep the smallest set of most likely tokens whose probability mass reaches top_p.
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying: one matrix reads and writes tokens
        self.apply(self._init_weights)

    def _init_weights(self, module):
        # GPT-2: N(0, 0.02); projections into the residual stream scaled so its variance stays put with depth
        if isinstance(module, nn.Linear):
            scale = (2 * self.config.n_layer) ** -0.5 if getattr(module, "residual_scale_init", False) else 1
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02 * scale)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden_states(self, idx, kv_cache=None, pos=None, attn_mask=None):
        """Final-layer-norm output (B, T, n_embd) for ids (B, T). pos (B, T) and attn_mask (B, 1, T, T) let a
        row hold sequences sharing a prefix (hellaswag.py); by default: positions after the cache, causal."""
        B, T = idx.size()
        past = kv_cache.length if kv_cache is not None else 0
        if pos is None:
            if past + T > self.config.block_size:
                raise ValueError(f"{past + T} positions are more than block_size {self.config.block_size}")
            pos = torch.arange(past, past + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, n_embd)
        for block in self.transformer.h:
            x = block(x, kv_cache, attn_mask)
        if kv_cache is not None:
            kv_cache.length += T
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None, kv_cache=None, reduction="mean"):
        """(logits (B, T, V), loss), targets of -1 ignored; reduction="none": (None, per-token loss (B, T)),
        projecting onto the vocabulary only where a target exists."""
        x = self.hidden_states(idx, kv_cache)
        if targets is None:
            return self.lm_head(x), None
        if reduction == "mean":
            logits = self.lm_head(x)                                            # (B, T, V)
            return logits, F.cross_entropy(logits.flatten(0, 1), targets.reshape(-1), ignore_index=-1)
        if reduction == "none":
            scored = targets != -1
            token_loss = torch.zeros(targets.shape, dtype=torch.float32, device=x.device)
            logits = self.lm_head(x[scored])                                   # (scored tokens, V)
            token_loss[scored] = F.cross_entropy(logits, targets[scored], reduction="none").float()
            return None, token_loss
        raise ValueError(f"reduction must be 'mean' or 'none', not {reduction!r}")

    def num_params(self, non_embedding=False):
        """Parameters, tied wte/lm_head once; non_embedding leaves out wpe (a lookup, no FLOPs)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 * L * H * Q * T."""
        c, T = self.config, seq_len or self.config.block_size
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layer * c.n_embd * T  # H * Q = n_embd

    def estimate_mfu(self, tokens_per_second, peak_flops, seq_len=None):
        """Model FLOPs utilisation: achieved training FLOP/s as a fraction of the device's peak."""
        return self.flops_per_token(seq_len) * tokens_per_second / peak_flops

    # --- generation -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None,
                 use_cache=True, stop_token=None, num_beams=1, **beam_options):
        """Append max_new_tokens sampled tokens to idx (B, T); temperature 0 is greedy. With stop_token it
        returns once every row has produced it (rows that stopped sooner carry on: cut at the first one).
        Past block_size the last block_size tokens are read; their positions shift, so the cache refills."""
        if num_beams > 1:  # a deterministic search instead of sampling: see beam_search for its options
            return self.beam_search(idx, max_new_tokens, num_beams, stop_token=stop_token, **beam_options)
        check_sampling(temperature, top_k, top_p)
        was_training = self.training
        self.eval()
        block_size = self.config.block_size
        cache = KVCache(self.config, idx.size(0), idx.device, self.lm_head.weight.dtype,  # room for this call
                        min(block_size, idx.size(1) + max_new_tokens)) if use_cache else None
        stopped = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            newest_only = cache is not None and 0 < cache.length < block_size
            if cache is not None and not newest_only:
                cache.length = 0                                         # (re)fill from the cropped context
            x = self.hidden_states(idx[:, -1:] if newest_only else idx[:, -block_size:], cache)
            logits = self.lm_head(x[:, -1, :])[:, :self.config.vocab_size]  # (B, V): padded ids never occur
            idx_next = sample_next_token(logits, temperature, top_k, top_p, generator)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
            if stop_token is not None:
                stopped |= idx_next[:, 0] == stop_token
                if stopped.all():
                    break
        self.train(was_training)
        return idx

    @torch.no_grad()
    def beam_search(self, idx, max_new_tokens, num_beams=4, length_penalty=1.0, no_repeat_ngram_size=0,
                    stop_token=None, early_stopping=False):
        """The best of num_beams beams, as transformers' generate(num_beams=...): idx (1, T) -> (1, T + n).
        Each step extends every running beam by every token and keeps the num_beams best sums of log-probs.
        A beam that emits a stop token (id or list), or reaches max_new_tokens, finishes with the score
        sum / n ** length_penalty (n: its new tokens). The search ends when num_beams have finished and no
        running beam can beat the worst of them, judged at its current length (early_stopping=False), at
        max_new_tokens ("never", length_penalty > 0) or not at all (True). no_repeat_ngram_size=K bans
        repeating a K-gram, prompt included. A list of 1-D prompts is searched one by one into a list."""
        n = no_repeat_ngram_size
        if isinstance(idx, (list, tuple)):
            return [self.beam_search(torch.as_tensor(p).view(1, -1), max_new_tokens, num_beams,
                                     length_penalty, n, stop_token, early_stopping)[0] for p in idx]
        T, V = idx.size(1), self.config.vocab_size
        if T + max_new_tokens > self.config.block_size:
            raise ValueError(f"prompt ({T}) + max_new_tokens ({max_new_tokens}) exceed block_size "
                             f"{self.config.block_size}")
        stops = {stop_token} if isinstance(stop_token, int) else set(stop_token or ())
        # Even if every beam's best continuations are stop tokens, num_beams candidates remain to carry on.
        n_cand = max(2, 1 + len(stops)) * num_beams
        was_training = self.training
        self.eval()
        cache = KVCache(self.config, 1, idx.device, self.lm_head.weight.dtype, T + max_new_tokens)
        beams, sums = idx, torch.zeros(1, device=idx.device)   # running beams (b, T + t), their log-prob sums
        finished = []                                          # (score, token list), best first
        step_input = idx                                       # the prompt once, then each beam's new token
        for t in range(max_new_tokens):
            logits = self(step_input, kv_cache=cache)[0][:, -1, :V]     # (b, V): padded ids are never tokens
            logp = F.log_softmax(logits.float(), dim=-1)
            if n and beams.size(1) >= n:   # a token is banned if it ends a K-gram seen before in this beam
                windows = beams.unfold(1, n, 1)                                    # (b, T + t - n + 1, n)
                seen = (windows[:, :, :-1] == beams[:, None, beams.size(1) - n + 1:]).all(-1)
                banned = torch.zeros_like(logp).scatter_add_(1, windows[:, :, -1], seen.float())
                logp = logp.masked_fill(banned > 0, float("-inf"))
            # The n_cand best of all b * V are among each beam's own n_cand best: two small top-k's, exact.
            row_top, row_token = (sums[:, None] + logp).topk(n_cand, dim=-1)           # (b, n_cand) each
            top, pick = row_top.view(-1).topk(n_cand)                  # best continuations over all beams
            beam_of, token_of = (pick // n_cand).tolist(), row_token.view(-1)[pick].tolist()
            score = top / (t + 1) ** length_penalty                    # their score, were they to finish now
            rows, tokens, kept = [], [], []
            for rank, (beam, token, s) in enumerate(zip(beam_of, token_of, score.tolist())):
                if token in stops or t == max_new_tokens - 1:
                    if rank < num_beams:   # as transformers: a finish below the num_beams best is dropped
                        finished.append((s, beams[beam].tolist() + [token]))
                elif len(rows) < num_beams:
                    rows.append(beam), tokens.append(token), kept.append(rank)
            finished = sorted(finished, key=lambda f: -f[0])[:num_beams]   # stable: earlier wins a tie
            if t == max_new_tokens - 1 or len(finished) == num_beams and early_stopping is True:
                break
            if len(finished) == num_beams:
                best_n = max_new_tokens if early_stopping == "never" and length_penalty > 0 else t + 1
                if (top[kept[0]] / best_n ** length_penalty).item() <= finished[-1][0]:
                    break   # the best running beam, at its best length, cannot enter the finished list
            rows = torch.tensor(rows, device=idx.device)
            step_input = torch.tensor(tokens, device=idx.device).view(-1, 1)   # (b, 1): each beam's new token
            beams, sums = torch.cat((beams[rows], step_input), dim=1), top[kept]
            cache.reorder(rows, shared=T)   # each beam keeps the keys and values of the prefix it extends
        self.train(was_training)
        return torch.tensor([finished[0][1]], device=idx.device) if finished else idx

    # --- HuggingFace interop ----------------------------------------------------------------------
    _CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    _VOCAB_ROWS = ("transformer.wte.weight", "lm_head.weight")

    @classmethod
    def from_pretrained(cls, name_or_path, **config_overrides):
        """OpenAI's GPT-2 (a GPT_SIZES name) via transformers, or a save_pretrained / save_hf directory.
        Its weights are copied in with names and shapes checked; Conv1D's (in, out) weights transposed."""
        hf = load_hf_gpt2(name_or_path)
        hc = hf.config
        model = cls(GPTConfig(block_size=hc.n_positions, vocab_size=hc.vocab_size, n_layer=hc.n_layer,
                              n_head=hc.n_head, n_embd=hc.n_embd, layer_norm_epsilon=hc.layer_norm_epsilon,
                              **config_overrides))
        ours = model.state_dict()
        theirs = {k: v for k, v in hf.state_dict().items() if not k.endswith((".attn.bias", "masked_bias"))}
        missing, unexpected = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
        if missing or unexpected:
            raise ValueError(f"not a GPT-2 state dict: missing {missing[:3]}, unexpected {unexpected[:3]}")
        for name, value in theirs.items():  # into state_dict()'s tensors: detached, sharing the weights
            value = value.t() if name.endswith(cls._CONV1D_WEIGHTS) else value
            target = ours[name][:len(value)] if name in cls._VOCAB_ROWS else ours[name]  # padding keeps init
            if value.shape != target.shape:
                raise ValueError(f"shape mismatch: {name} {list(value.shape)} vs {list(target.shape)}")
            target.copy_(value)
        return model

    def save_hf(self, out_dir, tokenizer=None):
        """A directory transformers loads as its own: GPT2LMHeadModel, tokenizer, <|endoftext|> as eos."""
        from transformers import GPT2Config, GPT2LMHeadModel
        c = self.config
        hf_tok = _hf_tokenizer(tokenizer) if tokenizer is not None else None
        if hf_tok is not None and len(hf_tok) > c.vocab_size:
            raise ValueError(f"the tokenizer has {len(hf_tok)} ids but the model only {c.vocab_size}")
        eos = hf_tok.eos_token_id if hf_tok is not None else c.vocab_size - 1
        hf = GPT2LMHeadModel(GPT2Config(
            vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
            n_head=c.n_head, layer_norm_epsilon=c.layer_norm_epsilon, activation_function="gelu_new",
            resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout, bos_token_id=eos,
            eos_token_id=eos))
        state = {name: value.t() if name.endswith(self._CONV1D_WEIGHTS) else value
                 for name, value in self.state_dict().items()}
        hf.load_state_dict({**state, **{name: state[name][:c.vocab_size] for name in self._VOCAB_ROWS}})
        # Write beside the target, then swap it in: a crash never leaves a half-written export behind.
        tmp, old = f"{out_dir}.tmp", f"{out_dir}.old"
        shutil.rmtree(tmp, ignore_errors=True)
        hf.save_pretrained(tmp)
        if hf_tok is not None:
            hf_tok.save_pretrained(tmp)
        if os.path.exists(out_dir):
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
        return out_dir


def _hf_tokenizer(tokenizer):
    """A transformers byte-level BPE equal to `tokenizer`: GPT-2's byte spelling, same regex and merges."""
    import bpe
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    # A bpe.py tokenizer as it is (byte: one without merges); tiktoken's GPT-2 with merges rebuilt from ranks.
    tok = tokenizer.tok if isinstance(tokenizer, BPETokenizer) else bpe.Tokenizer.from_tiktoken(tokenizer)
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]  # GPT-2's bytes_to_unicode table
    char = {b: chr(b) for b in keep}
    char.update({b: chr(256 + k) for k, b in enumerate(b for b in range(256) if b not in char)})
    spell = {i: "".join(char[b] for b in token) for i, token in tok.vocab.items()
             if i not in tok.inverse_special_tokens}
    vocab = {s: i for i, s in spell.items()}
    if len(vocab) < len(spell):
        raise ValueError("two tokens spell the same bytes: a HuggingFace BPE vocabulary cannot hold both")
    merges = [(spell[a], spell[b]) for a, b in tok.merges]
    backend = Tokenizer(models.BPE(vocab={**vocab, **tok.special_tokens}, merges=merges))
    split = [pre_tokenizers.Split(Regex(tok.pattern), behavior="isolated")] if tok.pattern else []
    backend.pre_tokenizer = pre_tokenizers.Sequence(split + [pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                      use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in tok.special_tokens])
    eos = EOT if EOT in tok.special_tokens else None
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, bos_token=eos,
                                   clean_up_tokenization_spaces=False)


def load_hf_gpt2(name_or_path):
    """transformers' GPT2LMHeadModel for a GPT-2 name or directory, checked to be a GPT-2 we implement."""
    from transformers import AutoConfig, GPT2LMHeadModel  # imported here: transformers is slow to import
    if not os.path.isdir(name_or_path) and name_or_path not in GPT_SIZES:
        raise ValueError(f"unknown model {name_or_path!r}: use one of {', '.join(GPT_SIZES)} "
                         "or a directory written by save_pretrained")
    try:
        c = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        hint = " (no network? the HuggingFace hub is unreachable)" if name_or_path in GPT_SIZES else ""
        raise ValueError(f"could not load {name_or_path!r}{hint}: {str(e).splitlines()[0]}") from None
    if c.model_type != "gpt2":
        raise ValueError(f"{name_or_path!r} holds a {c.model_type!r} model, not GPT-2")
    act = c.activation_function
    unsupported = [what for what, bad in [
        (f"activation {act}", act not in ("gelu_new", "gelu_pytorch_tanh")),
        ("n_inner", c.n_inner not in (None, 4 * c.n_embd)),
        ("reorder_and_upcast_attn", c.reorder_and_upcast_attn),
        ("scale_attn_by_inverse_layer_idx", c.scale_attn_by_inverse_layer_idx),
        ("scale_attn_weights=False", not c.scale_attn_weights)] if bad]
    if unsupported:
        raise ValueError(f"{name_or_path!r} uses GPT-2 options this model does not implement: {unsupported}")
    return GPT2LMHeadModel.from_pretrained(name_or_path, dtype=torch.float32)


# --- What the scripts share: devices, tokenizers, checkpoints, input checks, files ------------
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets; more specific names first.
PEAK_BF16_FLOPS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
                   ("GH200", 989e12), ("A100", 312e12), ("4090", 165.2e12), ("3090", 71e12), ("L4", 121e12)]


def peak_flops(device):
    """The dense bf16 peak of a known CUDA card, else None (then ask the user for --peak-flops)."""
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


def auto_device():
    return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


def check_device(name):
    """'auto' resolved, or a device torch knows and this machine has."""
    device = auto_device() if name == "auto" else name
    try:
        kind, index = torch.device(device).type, torch.device(device).index
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    present = {"cpu": 1, "cuda": torch.cuda.device_count(), "mps": int(torch.backends.mps.is_available())}
    if present.get(kind, 0) <= (index or 0):
        raise ValueError(f"device {name!r} is not available on this machine")
    return device


class BPETokenizer:
    """A bpe.py tokenizer, encoding through tiktoken where to_tiktoken proves it exact, else itself.
    name "byte": the one without merges, raw UTF-8 bytes (ids 0..255) and <|endoftext|> = 256."""

    def __init__(self, tok, name="bpe"):
        self.tok, self.name, self.n_vocab, self.decode = tok, name, max(tok.vocab) + 1, tok.decode
        try:
            self.encode_ordinary = tok.to_tiktoken().encode_ordinary
        except ValueError:
            self.encode_ordinary = tok.encode_ordinary

    @property
    def eot_token(self):
        if EOT not in self.tok.special_tokens:
            raise ValueError(f"this bpe.py tokenizer has no {EOT} token to separate documents; train it with "
                             f"--special '{EOT}'")
        return self.tok.special_tokens[EOT]

    def encode(self, text, allowed_special=()):
        return self.tok.encode(text, allowed_special=allowed_special or "none")


def get_tokenizer(spec):
    """'gpt2' (tiktoken), 'byte', a bpe.py .model file or a stored dict -> .encode(_ordinary), .decode etc."""
    import bpe
    spec = os.fspath(spec) if isinstance(spec, os.PathLike) else spec
    if isinstance(spec, dict):  # a bpe.py tokenizer, whole (checked as a .model file is)
        return BPETokenizer(bpe.Tokenizer.from_dict(spec))
    if spec == "byte":   # needs no vocabulary file
        return BPETokenizer(bpe.Tokenizer(None, {EOT: 256}), "byte")
    if isinstance(spec, str) and spec.endswith(".model"):
        return BPETokenizer(bpe.Tokenizer().load(spec))
    if spec != "gpt2":
        raise ValueError(f"unknown tokenizer {spec!r}: use 'gpt2', 'byte' or a .model file written by bpe.py")
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # tiktoken fetches its BPE files once; requests/OS errors surface from deep inside
        raise ValueError("could not load GPT-2's BPE files (tiktoken downloads them once, then caches them "
                         f"in TIKTOKEN_CACHE_DIR; offline?): {type(e).__name__}") from None


def tokenizer_spec(tok):
    """'gpt2', 'byte', or a bpe.py tokenizer whole as a dict: a checkpoint then needs no tokenizer file."""
    tok = get_tokenizer(tok) if isinstance(tok, str) and tok.endswith(".model") else tok
    if isinstance(tok, BPETokenizer) and tok.name == "bpe":
        return tok.tok.to_dict()
    return tok if isinstance(tok, (str, dict)) else tok.name  # tiktoken's "gpt2" or "byte"


def save_checkpoint(path, model, tokenizer, **extra):
    """Write {'model', 'config', 'tokenizer' (tokenizer_spec), **extra (weights_only-loadable)} atomically."""
    raw = unwrap(model)
    checkpoint = {"model": raw.state_dict(), "config": asdict(raw.config),
                  "tokenizer": tokenizer_spec(tokenizer), **extra}
    with atomic_write(path) as f:
        torch.save(checkpoint, f)


def load_checkpoint(path, device="cpu", **config_overrides):
    """(model, checkpoint dict) from save_checkpoint's file, its structure, config and weights checked."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:120]})") from None
    if not isinstance(checkpoint, dict) or not all(isinstance(checkpoint.get(k), dict)
                                                   for k in ("model", "config")):
        raise ValueError(f"{path} is not a checkpoint of this project (no 'model' and 'config' dicts)")
    saved = {k: v for k, v in checkpoint["config"].items() if k in {f.name for f in fields(GPTConfig)}}
    try:
        config = GPTConfig(**{**saved, **config_overrides})
    except ValueError as e:
        raise ValueError(f"{path}: config {e}") from None
    # Names saved through a torch.compile ('_orig_mod.') or DDP ('module.') wrapper load too.
    state = {re.sub(r"^((_orig_mod|module)\.)+", "", name): w for name, w in checkpoint["model"].items()}
    # The weights have the shapes the config promises (before building a model that size), and are finite.
    layers = {name.split(".")[2] for name in state if name.startswith("transformer.h.")}
    shapes = [getattr(state.get(f"transformer.{name}.weight"), "shape", None) for name in ("wte", "wpe")]
    if len(layers) != config.n_layer or shapes != [(config.padded_vocab_size, config.n_embd),
                                                   (config.block_size, config.n_embd)]:
        raise ValueError(f"{path}: its weights do not match its config (layers, vocabulary or context size)")
    for name, value in state.items():
        if not torch.is_tensor(value) or value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{path}: weight {name} is not a finite tensor")
    model = GPT(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path} does not match its own config: {str(e).splitlines()[0][:200]}") from None
    return model.to(device), checkpoint


# Input checks: each raises a one-line ValueError naming the culprit, printed by the CLIs before any work.
def check_sampling(temperature, top_k=None, top_p=None):
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), not {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, not {top_k}")
    if top_p is not None and not 0 < top_p <= 1:  # NaN fails this test too
        raise ValueError(f"top_p must be in (0, 1], not {top_p}")


def check_text(text, what):
    """Command-line text that is valid UTF-8 (the shell hands undecodable bytes over as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8") from None


def check_output(path, inputs=(), directory=False):
    """Before long work: `path` can be written and is not (for a directory: holds) any of the inputs."""
    real = os.path.realpath(path)
    for other in filter(None, inputs):
        if os.path.realpath(other) == real or directory and os.path.realpath(other).startswith(real + os.sep):
            raise ValueError(f"output {path} would overwrite the input {other}")
    if directory and os.path.isdir(real) and os.listdir(real) and not os.path.isfile(f"{real}/config.json"):
        raise ValueError(f"output directory {path} holds other files; choose a new or empty directory")
    if not directory and os.path.isdir(real):
        raise ValueError(f"output {path} is a directory")
    parent = os.path.dirname(real)
    while not os.path.exists(parent):  # missing directories are made later, inside the first that exists
        parent = os.path.dirname(parent)
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as e:
        raise ValueError(f"output {path} cannot be written ({e.strerror})") from None


def unwrap(model):
    """The plain module under torch.compile (._orig_mod) and DistributedDataParallel (.module)."""
    while hasattr(model, "_orig_mod") or isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model._orig_mod if hasattr(model, "_orig_mod") else model.module
    return model


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """A file that appears at `path` (renamed from path.tmp, flushed) only if the block ends without error."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        pathlib.Path(tmp).unlink(missing_ok=True)


def download(url, path, hint="", timeout=30):
    """Stream `url` into `path` atomically; on failure a one-line ValueError ending in `hint`."""
    import requests
    from tqdm import tqdm
    try:
        with requests.get(url, stream=True, timeout=timeout) as response, atomic_write(path) as f:
            response.raise_for_status()
            total = int(response.headers.get("content-length", 0)) or None
            with tqdm(total=total, unit="iB", unit_scale=True, desc=os.path.basename(path),
                      disable=total is None) as bar:
                for chunk in response.iter_content(chunk_size=1 << 16):
                    bar.update(f.write(chunk))
    except requests.RequestException as e:
        status = getattr(e.response, "status_code", None)
        reason = f"HTTP {status}" if status else type(e).__name__
        raise ValueError(f"could not download {url} ({reason}); offline? {hint}".rstrip()) from None
    return path


# --- python model.py: sample from GPT-2 or a checkpoint, or export either for transformers ----
def main(argv=None):
    parser = argparse.ArgumentParser(description="Sample text from GPT-2 or a checkpoint of train_gpt2.py, "
                                                 "or export either as a HuggingFace directory.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--init", help="gpt2, gpt2-medium, gpt2-large, gpt2-xl or a HF directory")
    source.add_argument("--ckpt", help="checkpoint written by train_gpt2.py, e.g. log/model.pt")
    parser.add_argument("--prompt", default="Hello, I'm a language model,")
    for flag, default in (("--num-samples", 4), ("--max-new-tokens", 64), ("--top-k", 50), ("--seed", 42)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--export-hf", metavar="DIR", help="write model + tokenizer for transformers instead")
    args = parser.parse_args(argv)
    if args.num_samples < 1 or args.max_new_tokens < 0:
        sys.exit("error: --num-samples must be >= 1 and --max-new-tokens >= 0")
    try:
        check_sampling(args.temperature, args.top_k, args.top_p)
        check_text(args.prompt, "--prompt")
        device = check_device(args.device)
        if args.export_hf:
            check_output(args.export_hf, [args.ckpt, args.init], directory=True)
        if args.ckpt:
            model, checkpoint = load_checkpoint(args.ckpt, device)
            enc = get_tokenizer(checkpoint.get("tokenizer", "gpt2"))
        else:
            model, enc = GPT.from_pretrained(args.init or "gpt2").to(device), get_tokenizer("gpt2")
        if args.export_hf:
            print(f"wrote {model.save_hf(args.export_hf, enc)} (AutoModelForCausalLM/AutoTokenizer load it)")
            return
        prompt = enc.encode_ordinary(args.prompt) or [enc.eot_token]
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    if len(prompt) >= model.config.block_size:
        sys.exit(f"error: the prompt is {len(prompt)} tokens; the model reads {model.config.block_size}")
    idx = torch.tensor([prompt] * args.num_samples, dtype=torch.long, device=device)
    out = model.generate(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, generator=torch.Generator(device=device).manual_seed(args.seed))
    for i, row in enumerate(out.tolist()):
        print(f"--- sample {i}\n{enc.decode(row)}")


if __name__ == "__main__":
    main()
