"""Text encoders: ``encode(texts) -> (tokens (B, L, text_dim), mask (B, L) bool)``.

- ``bytes`` (:class:`ByteTextEncoder`): tokenizer-free (UTF-8 bytes, ByT5's idea) with a small
  Transformer encoder, trained together with the DiT. Works offline anywhere; the toy configs use it.
- ``pretrained`` (:class:`PretrainedTextEncoder`): a transformers encoder (e.g. umT5-XXL's encoder,
  as Wan and LongCat use) from a local directory (``text.path``), frozen, never downloaded; fails
  naming the missing path. ``text_dim`` of the DiT must equal its hidden size.

Every text yields at least one token (a begin token), so an empty text (the CFG "no text" input)
still has a key to attend to.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

BOS, PAD = 256, 257


class ByteTextEncoder(nn.Module):
    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, max_len: int = 128):
        super().__init__()
        self.max_len = max_len
        self.embed = nn.Embedding(258, dim)
        pe = torch.zeros(max_len + 1, dim)
        pos = torch.arange(max_len + 1)[:, None]
        div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        self.register_buffer("pe", pe, persistent=False)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def ids(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [[BOS] + list(t.encode("utf-8"))[: self.max_len] for t in texts]
        n = max(len(r) for r in rows)
        ids = torch.full((len(rows), n), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
        return ids, ids != PAD

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.ids(texts)
        ids, mask = ids.to(self.pe.device), mask.to(self.pe.device)
        h = self.embed(ids) + self.pe[: ids.shape[1]]
        return self.norm(self.encoder(h, src_key_padding_mask=~mask)), mask


class PretrainedTextEncoder(nn.Module):
    """A frozen transformers encoder from a local directory (T5/umT5 encoders or any AutoModel with
    an encoder); outputs its last hidden state."""

    def __init__(self, path: str, max_len: int = 512):
        super().__init__()
        if not Path(path, "config.json").exists():
            raise FileNotFoundError(f"text encoder not found: {path}/config.json (text.path)")
        from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        kind = AutoConfig.from_pretrained(path, local_files_only=True).model_type
        cls = T5EncoderModel if kind in ("t5", "umt5", "mt5") else AutoModel
        self.model = cls.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        self.max_len = max_len

    @torch.no_grad()
    def encode(self, texts: list[str]):
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_len,
                             return_tensors="pt")
        out = self.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        return out.last_hidden_state, enc.attention_mask.bool()


def build_text_encoder(spec: dict, text_dim: int) -> nn.Module:
    spec = dict(spec or {"kind": "bytes"})
    kind = spec.pop("kind", "bytes")
    if kind == "bytes":
        return ByteTextEncoder(dim=text_dim, **spec)
    if kind == "pretrained":
        return PretrainedTextEncoder(**spec)
    raise ValueError(f"unknown text encoder kind {kind!r} (bytes, pretrained)")
