"""KV caches on transformers' Cache API, filled from a full-precision prefill.

Every quality-only method holds its cache the way it would in deployment: the prompt is prefilled at
full precision once, then ``convert`` copies that cache into the method's form (older tokens encoded,
a full-precision window of the most recent ones), and every later token attends to what the method
stores, read back on every forward. ``BlockLayer`` (a ``DynamicLayer``) does this for any codec;
``hf-quanto`` methods use transformers' own ``QuantoQuantizedLayer`` unchanged. ``cache_bytes``
measures the bytes a cache object really holds (the distinct storages of its tensors).
"""

from __future__ import annotations

import copy

import torch
from transformers.cache_utils import Cache, DynamicLayer, QuantoQuantizedLayer

from ptq_deploy.kvcache.codecs import (Codec, ForgeCodec, KiviCodec, KVQuantCodec, PassthroughCodec, leaf_tensors,
                                       storage_bytes)
from ptq_deploy.kvcache.methods import KVMethod


class BlockLayer(DynamicLayer):
    """Encoded blocks of older tokens + a full-precision window (``self.keys``/``self.values``) of recent ones.

    ``update`` returns the decoded blocks, the window and the new tokens (the new ones at full precision,
    as in KIVI); then whole blocks beyond ``window`` tokens are encoded and dropped from the window.
    Each block is decoded once, when it is encoded, into a read buffer (``decoded_*``): attention reads
    exactly the decoded values, and a CPU run does not pay a decode of the whole cache per token (a
    fused GPU kernel dequantizes on the fly instead). ``stored()`` is what the method holds; the buffer
    is reported apart (``buffer()``).
    """

    def __init__(self, codec: Codec, window: int):
        super().__init__()
        self.codec, self.window = codec, window
        self.enc_keys: list = []
        self.enc_values: list = []
        self.decoded_keys: torch.Tensor | None = None
        self.decoded_values: torch.Tensor | None = None
        self.n_encoded = 0

    def load(self, keys: torch.Tensor, values: torch.Tensor) -> "BlockLayer":
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values
        self._flush()
        return self

    def _flush(self) -> None:
        n = self.keys.shape[-2] - self.window
        n -= n % self.codec.block
        if n <= 0:
            return
        ek = self.codec.encode(self.keys[..., :n, :], key=True)
        ev = self.codec.encode(self.values[..., :n, :], key=False)
        self.enc_keys.append(ek)
        self.enc_values.append(ev)
        dk, dv = self.codec.decode(ek), self.codec.decode(ev)
        self.decoded_keys = dk if self.decoded_keys is None else torch.cat([self.decoded_keys, dk], dim=-2)
        self.decoded_values = dv if self.decoded_values is None else torch.cat([self.decoded_values, dv], dim=-2)
        self.keys = self.keys[..., n:, :].clone()  # a view would keep the whole full-precision tensor alive
        self.values = self.values[..., n:, :].clone()
        self.n_encoded += n

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        if self.decoded_keys is None:
            keys, values = self.keys, self.values
        else:
            keys = torch.cat([self.decoded_keys, self.keys], dim=-2)
            values = torch.cat([self.decoded_values, self.values], dim=-2)
        self._flush()
        return keys, values

    def get_seq_length(self) -> int:
        return self.n_encoded + (self.keys.shape[-2] if self.is_initialized and self.keys.dim() == 4 else 0)

    def stored(self) -> list[torch.Tensor]:
        enc = [t for e in (*self.enc_keys, *self.enc_values) for t in self.codec.stored(e)]
        return [*enc, self.keys, self.values]

    def buffer(self) -> list[torch.Tensor]:
        return [t for t in (self.decoded_keys, self.decoded_values) if t is not None]


def codec_for(method: KVMethod) -> Codec:
    if method.family == "kivi":
        return KiviCodec(method.bits, method.group, method.window)
    if method.family in ("kvquant", "uniform"):
        return KVQuantCodec(method.bits, method.group, method.outliers)
    if method.family == "forge":
        return ForgeCodec(method.energy, method.group)
    if method.family == "passthrough":
        return PassthroughCodec()
    raise ValueError(f"{method.name}: no codec for family {method.family}")


def convert(prefill: Cache, method: KVMethod) -> Cache:
    """A new cache holding ``prefill``'s tokens in ``method``'s form (``prefill`` itself is left untouched)."""
    layers = []
    for src in prefill.layers:
        k, v = src.keys, src.values
        if method.family == "none":
            layer = DynamicLayer()
            layer.update(k, v)  # a copy: later tokens are appended to this cache only
        elif method.family == "hf-quanto":
            layer = QuantoQuantizedLayer(nbits=method.bits, axis_key=0, axis_value=0, q_group_size=method.group,
                                         residual_length=method.window)
            layer.update(k, v)  # transformers' own path: the prompt is quantized on the first update
        else:
            layer = BlockLayer(codec_for(method), method.window).load(k, v)
        layers.append(layer)
    return Cache(layers=layers)


def clone(cache: Cache) -> Cache:
    """An independent copy (layers only ever replace their tensors, never write into them, so the tensors
    are shared and the block lists copied)."""
    layers = []
    for layer in cache.layers:
        new = copy.copy(layer)
        if isinstance(layer, BlockLayer):
            new.enc_keys, new.enc_values = list(layer.enc_keys), list(layer.enc_values)
        layers.append(new)
    return Cache(layers=layers)


def layer_tensors(layer) -> list[torch.Tensor]:
    if isinstance(layer, BlockLayer):
        return layer.stored()
    if isinstance(layer, QuantoQuantizedLayer):
        return leaf_tensors([layer._quantized_keys, layer._quantized_values, layer.keys, layer.values])
    return leaf_tensors([layer.keys, layer.values])


def cache_bytes(cache: Cache) -> int:
    """Bytes the cache object stores: the distinct storages of every layer's tensors (read buffers apart)."""
    return storage_bytes([t for layer in cache.layers for t in layer_tensors(layer)])


def buffer_bytes(cache: Cache) -> int:
    """Bytes of the decoded read buffers (``BlockLayer``), 0 for the other layers."""
    return storage_bytes([t for layer in cache.layers if isinstance(layer, BlockLayer) for t in layer.buffer()])
