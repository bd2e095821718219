"""Semantic-token generation for fish-speech 1.2's DualARTransformer, shaped for a CPU.

The same computation as fish-speech's `tools/llama/generate.py` (`generate_long` -> `generate` ->
`decode_one_token_ar`), on the same modules and weights, with the same sampling functions and the same
random draws in the same order, so with equal weights, seed and precision it yields the same tokens. What
differs is only what the CPU has to move per token:
- the KV caches are allocated once, at load, for the model's whole context; fish-speech allocates them on
  the first request and attends over all of them (up to 4096 positions, masked) on every token, after
  copying the two key/value heads into sixteen (`repeat_interleave`); here attention reads only the filled
  positions and shares the key/value heads (grouped-query attention);
- the tokens whose keys and values are in the cache are remembered: a prompt that starts with them (the
  same reference voice again, or the next sentence of a request, whose prompt is the previous one plus the
  generated tokens) is prefilled only from where it differs;
- in bf16, a linear layer applied to one token is torch.mv over its weight: the same values as F.linear,
  but F.linear's batch-1 bf16 path is slower than fp32 even on CPUs with native bf16 (with torch 2.13 on a
  CPU with AMX: up to six times slower than torch.mv in bf16 on fish-speech's 1024 x 4096 projection),
  while torch.mv in bf16 is faster than fp32 there;
- generation stops between tokens when the request is cancelled.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Imported from fish-speech's source tree (see fish_engine.import_fish_speech).
from fish_speech.models.text2semantic.llama import DualARTransformer, apply_rotary_emb
from fish_speech.text import split_text
from tools.llama.generate import encode_tokens, sample

# fish-speech's generate_long: the repetition-penalty window and the context budget of a request.
_WINDOW = 16
_MAX_LENGTH = 2048


@dataclass(frozen=True)
class Sampling:
    """fish-speech 1.2's /v1/invoke sampling fields, with its defaults (tools/api.py InvokeRequest)."""

    max_new_tokens: int = 1024
    chunk_length: int = 100
    top_p: float = 0.7
    repetition_penalty: float = 1.2
    temperature: float = 0.7

    @staticmethod
    def from_options(values: dict[str, float]) -> "Sampling":
        known = {k: values[k] for k in ("top_p", "repetition_penalty", "temperature") if k in values}
        ints = {k: int(values[k]) for k in ("max_new_tokens", "chunk_length") if k in values}
        return Sampling(**known, **ints)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"temperature": torch.tensor(self.temperature, dtype=torch.float),
                "top_p": torch.tensor(self.top_p, dtype=torch.float),
                "repetition_penalty": torch.tensor(self.repetition_penalty, dtype=torch.float)}


@dataclass(frozen=True)
class Segment:
    text: str
    codes: torch.Tensor  # [num_codebooks, T] codec indices for the decoder
    prefilled: int  # prompt tokens computed for it (the rest came from the cache)
    generated: int  # tokens sampled, including the final one that is not audio


class Cancelled(Exception):
    """The request was cancelled between two tokens."""


class Generator:
    def __init__(self, model: DualARTransformer) -> None:
        if not isinstance(model, DualARTransformer):
            raise TypeError(f"fish-speech 1.2 checkpoints are DualARTransformer models, not {type(model).__name__}")
        self.model = model
        cfg = model.config
        self.codebooks = cfg.num_codebooks
        self.max_seq_len = cfg.max_seq_len
        dtype = next(model.parameters()).dtype
        if dtype == torch.bfloat16:
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    module.forward = _one_token_linear(module)  # type: ignore[method-assign]
        shape = (1, cfg.n_local_heads, self.max_seq_len, cfg.head_dim)
        self._k = [torch.zeros(shape, dtype=dtype) for _ in model.layers]
        self._v = [torch.zeros(shape, dtype=dtype) for _ in model.layers]
        fast = (1, cfg.n_local_heads, cfg.num_codebooks, cfg.head_dim)
        self._fk = [torch.zeros(fast, dtype=dtype) for _ in model.fast_layers]
        self._fv = [torch.zeros(fast, dtype=dtype) for _ in model.fast_layers]
        # Tokens [1 + codebooks, n] whose keys and values fill cache positions 0..n-1.
        self._cached = torch.zeros((1 + self.codebooks, 0), dtype=torch.int)
        self.im_end_id = model.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self._k, *self._v, *self._fk, *self._fv))

    # -- the transformer, on fish-speech's modules ---------------------------------------------------------

    def _attention(self, attn, x, freqs, kc, vc, start: int, mask: torch.Tensor | None,  # type: ignore[no-untyped-def]
                   fast: bool) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        kv_size = attn.n_local_heads * attn.head_dim
        q, k, v = attn.wqkv(x).split([attn.dim, kv_size, kv_size], dim=-1)
        q = apply_rotary_emb(q.view(bsz, seqlen, attn.n_head, attn.head_dim), freqs).transpose(1, 2)
        k = apply_rotary_emb(k.view(bsz, seqlen, attn.n_local_heads, attn.head_dim), freqs).transpose(1, 2)
        v = v.view(bsz, seqlen, attn.n_local_heads, attn.head_dim).transpose(1, 2)
        end = start + seqlen
        kc[:, :, start:end] = k
        vc[:, :, start:end] = v
        keys, values = kc[:, :, :end], vc[:, :, :end]
        if fast:
            # fish-speech's own formula for the fast layers (eq_scaled_dot_product_attention), whose
            # masked-out positions contribute exact zeros: reading only the filled ones gives the same sums.
            group = attn.n_head // attn.n_local_heads
            keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
            weights = torch.softmax(q @ keys.transpose(-2, -1) * (1 / math.sqrt(q.size(-1))), dim=-1)
            y = weights @ values
        else:
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
        return attn.wo(y.transpose(1, 2).contiguous().view(bsz, seqlen, attn.dim))

    def _slow(self, tokens: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill or one step of the slow transformer: (token logits, hidden state) of the last position."""
        model = self.model
        x = model.embed(tokens)
        seqlen = x.size(1)
        freqs = model.freqs_cis[start : start + seqlen]
        # A prefill's causal mask over the cached prefix and itself; one new token sees everything.
        mask = torch.ones(seqlen, start + seqlen, dtype=torch.bool).tril(diagonal=start) if seqlen > 1 else None
        for i, layer in enumerate(model.layers):
            h = x + self._attention(layer.attention, layer.attention_norm(x), freqs, self._k[i], self._v[i],
                                    start, mask, fast=False)
            x = h + layer.feed_forward(layer.ffn_norm(h))
        x = x[:, -1:]
        out = model.norm(x)
        logits = linear(out, model.embeddings.weight) if model.config.tie_word_embeddings else model.output(out)
        return logits, x

    def _fast(self, x: torch.Tensor, index: int) -> torch.Tensor:
        model = self.model
        x = x.view(1, 1, -1)
        freqs = model.freqs_cis[index : index + 1]
        for i, layer in enumerate(model.fast_layers):
            h = x + self._attention(layer.attention, layer.attention_norm(x), freqs, self._fk[i], self._fv[i],
                                    index, None, fast=True)
            x = h + layer.feed_forward(layer.ffn_norm(h))
        return model.fast_output(model.fast_norm(x))

    def _feed(self, tokens: torch.Tensor, start: int, window: torch.Tensor | None,
              sampling: dict[str, torch.Tensor]) -> torch.Tensor:
        """fish-speech's decode_one_token_ar: tokens [1 + codebooks, n] at positions start.. -> next [1 + codebooks, 1]."""
        # Whatever fails below leaves the cache beyond `start` unknown.
        self._cached = self._cached[:, :start]
        logits, hidden = self._slow(tokens[None], start)
        self._cached = torch.cat([self._cached, tokens], dim=1)
        codes = [sample(logits, previous_tokens=window[0] if window is not None else None, **sampling)[0]]
        x = hidden
        for index in range(self.codebooks):
            logits = self._fast(x, index)
            code = sample(logits, previous_tokens=window[index + 1] if window is not None else None, **sampling)[0]
            x = self.model.fast_embeddings(code)
            codes.append(code)
        return torch.stack(codes, dim=0)

    # -- fish-speech's generate and generate_long ----------------------------------------------------------

    @torch.inference_mode()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, sampling: dict[str, torch.Tensor],
                 cancel: threading.Event | None = None) -> tuple[torch.Tensor, int]:
        """prompt [1 + codebooks, T] -> (prompt + generated tokens, tokens prefilled); as fish-speech's generate."""
        width, length = prompt.shape
        if max_new_tokens <= 0 or length + max_new_tokens > self.max_seq_len:
            max_new_tokens = self.max_seq_len - length
        if max_new_tokens < 1:
            raise ValueError(f"the prompt has {length} tokens; the model's context is {self.max_seq_len}")
        # Keep the cached prefix this prompt shares, minus its last token, whose logits are needed.
        cached = self._cached
        limit = min(cached.size(1), length - 1)
        same = (cached[:, :limit] == prompt[:, :limit]).all(dim=0)
        reuse = int(limit if bool(same.all()) else int((~same).int().argmax()))
        token = self._feed(prompt[:, reuse:], reuse, None, sampling)
        previous = torch.zeros((width, self.max_seq_len), dtype=torch.int)
        out = [token]
        for i in range(max_new_tokens - 1):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            window = previous[:, :_WINDOW] if i < _WINDOW else previous[:, i - _WINDOW : i]
            token = self._feed(token.view(width, 1), length + i, window, sampling)
            previous[:, i : i + 1] = token.view(width, 1)
            out.append(token)
            if int(token[0, -1]) == self.im_end_id:
                break
        return torch.cat([prompt, *[t.view(width, 1) for t in out]], dim=1), length - reuse

    def generate_long(self, text: str, prompt_texts: Sequence[str], prompt_tokens: Sequence[torch.Tensor],
                      sampling: Sampling, cancel: threading.Event | None = None) -> Iterator[Segment]:
        """fish-speech's generate_long for one sample: the text sentence by sentence, each with the reference
        prompts and the sentences before it (up to its context budget) as prompt."""
        tokenizer = self.model.tokenizer
        prompts = [encode_tokens(tokenizer, string=t, device="cpu", prompt_tokens=c, num_codebooks=self.codebooks)
                   for t, c in zip(prompt_texts, prompt_tokens)]
        texts = split_text(text, sampling.chunk_length) if sampling.chunk_length > 0 else [text]
        encoded = [encode_tokens(tokenizer, string=t, device="cpu", num_codebooks=self.codebooks) for t in texts]
        tensors = sampling.tensors()
        history: list[torch.Tensor] = []
        budget = _MAX_LENGTH - 1024 - sum(p.shape[1] for p in prompts)
        with torch.inference_mode():
            for seg_text, seg in zip(texts, encoded):
                history.append(seg)
                parts = _recent(history, budget)
                full = torch.cat(prompts + parts, dim=1)
                y, prefilled = self.generate(full, sampling.max_new_tokens, tensors, cancel)
                length = full.size(1)
                # As fish-speech: the last token (<|im_end|>) is not audio, but the tokens fed stay context.
                codes = y[1:, length:-1].clone() - 1
                history.append(y[:, length:-1].clone())
                yield Segment(text=seg_text, codes=codes, prefilled=prefilled, generated=y.size(1) - length)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, by torch.mv when x is one bf16 vector (see the module's docstring)."""
    if x.dtype != torch.bfloat16 or x.numel() != weight.size(1):
        return F.linear(x, weight, bias)
    y = torch.mv(weight, x.reshape(-1)) if bias is None else torch.addmv(bias, weight, x.reshape(-1))
    return y.view(*x.shape[:-1], weight.size(0))


def _one_token_linear(module: torch.nn.Linear):  # type: ignore[no-untyped-def]
    return lambda x: linear(x, module.weight, module.bias)


def _recent(history: list[torch.Tensor], budget: int) -> list[torch.Tensor]:
    """fish-speech generate_long's context rotation: the first two parts plus as many recent ones as fit."""
    count = 0
    i = 0
    for i, length in enumerate(reversed([part.size(1) for part in history])):
        count += length
        if count + length > budget:
            break
    if i != 0 and i % 2 == 0:
        i -= 1
    if i < len(history) - 2:
        return history[:2] + history[-i:]
    return list(history)
