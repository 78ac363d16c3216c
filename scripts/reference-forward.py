#!/usr/bin/env python3
"""Exact float64 forward pass of a llama-architecture GGUF model with numpy: weights dequantized by the `gguf`
package (pip install gguf numpy), no activation quantization, fp64 attention. It is the yardstick for the
engines' own rounding: how far longctx and llama.cpp each are from the exact result of the same weights.

usage: scripts/reference-forward.py MODEL.gguf TOKENS_FILE OUT.f32
  TOKENS_FILE: whitespace-separated token ids; OUT.f32 receives the last position's logits (float32).
"""
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def main():
    model, tokens_file, out = sys.argv[1:4]
    r = GGUFReader(model)
    fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.")}
    arch = fields["general.architecture"]
    if arch != "llama":
        sys.exit(f"reference-forward: architecture {arch} is not supported (llama only)")
    n_layer = fields["llama.block_count"]
    n_head = fields["llama.attention.head_count"]
    n_head_kv = fields["llama.attention.head_count_kv"]
    n_embd = fields["llama.embedding_length"]
    eps = fields["llama.attention.layer_norm_rms_epsilon"]
    base = fields.get("llama.rope.freq_base", 10000.0)
    hd = n_embd // n_head
    tensors = {t.name: t for t in r.tensors}

    def weight(name):
        t = tensors[name]
        a = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64)
        return a.reshape([int(x) for x in reversed(t.shape)])

    toks = [int(x) for x in open(tokens_file).read().split()]
    n = len(toks)
    emb = weight("token_embd.weight")
    out_w = weight("output.weight") if "output.weight" in tensors else emb
    x = emb[toks]
    inv = base ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(n)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(v):  # adjacent pairs, as llama GGUFs are laid out
        a, b = v[..., 0::2], v[..., 1::2]
        o = np.empty_like(v)
        o[..., 0::2] = a * cos - b * sin
        o[..., 1::2] = a * sin + b * cos
        return o

    def rms(v, w):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * w

    mask = np.triu(np.full((n, n), -np.inf), 1)
    g = n_head // n_head_kv
    for il in range(n_layer):
        p = f"blk.{il}."
        h = rms(x, weight(p + "attn_norm.weight"))
        q = rope((h @ weight(p + "attn_q.weight").T).reshape(n, n_head, hd))
        k = rope((h @ weight(p + "attn_k.weight").T).reshape(n, n_head_kv, hd))
        v = (h @ weight(p + "attn_v.weight").T).reshape(n, n_head_kv, hd)
        att = np.empty((n, n_head, hd))
        for hh in range(n_head):
            s = q[:, hh, :] @ k[:, hh // g, :].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            att[:, hh, :] = (s / s.sum(-1, keepdims=True)) @ v[:, hh // g, :]
        x = x + att.reshape(n, -1) @ weight(p + "attn_output.weight").T
        h = rms(x, weight(p + "ffn_norm.weight"))
        gate, up = h @ weight(p + "ffn_gate.weight").T, h @ weight(p + "ffn_up.weight").T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ weight(p + "ffn_down.weight").T
    logits = out_w @ rms(x[-1], weight("output_norm.weight"))
    logits.astype(np.float32).tofile(out)


if __name__ == "__main__":
    main()
