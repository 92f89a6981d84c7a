"""KV codecs: how a span of keys or values ``[batch, heads, tokens, head_dim]`` is stored, and read back.

- ``KiviCodec``: KIVI-style asymmetric 2/4-bit, keys per channel (groups of ``group`` tokens), values per
  token (groups of ``group`` channels), through transformers' own quanto backend
  (``QuantoQuantizedLayer._quantize``: optimum-quanto's ``MaxOptimizer`` + ``quantize_weight``, bit-packed).
- ``KVQuantCodec``: KVQuant-style dense-and-sparse: the largest ``outliers`` fraction of entries kept in
  16 bit (int32 index + fp16 value), the rest uniform ``bits``-bit (keys per channel, values per token)
  with ranges that exclude the outliers; with no outliers, plain uniform ``bits``-bit. quanto packs only
  2/4 bits, so this one packs its own.
- ``ForgeCodec``: FORGE-style low rank: each chunk of ``block`` tokens (all heads of a layer side by
  side) as its truncated SVD keeping ``energy`` of the squared singular values.
- ``PassthroughCodec``: stores the tensor unchanged (a method that does nothing; tests use it to show
  the no-op finding).

A codec's ``encode`` takes a whole number of ``block``s of tokens; ``stored`` lists the tensors an
encoded span holds (what its bytes are measured from).
"""

from __future__ import annotations

import torch

def leaf_tensors(obj) -> list[torch.Tensor]:
    """The plain tensors inside ``obj`` (tensor subclasses such as quanto's are flattened, tuples walked)."""
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in leaf_tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in leaf_tensors(o)]
    if not isinstance(obj, torch.Tensor):
        return []
    if type(obj) is not torch.Tensor and hasattr(obj, "__tensor_flatten__"):
        names, _ = obj.__tensor_flatten__()
        return [t for n in names for t in leaf_tensors(getattr(obj, n))]
    return [obj]


def storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a view counts its whole storage: what is held)."""
    seen: dict[int, int] = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


class Codec:
    block = 1  # tokens per encode unit

    def encode(self, x: torch.Tensor, key: bool) -> object:
        """What the method stores for ``x`` (``[batch, heads, tokens, head_dim]``, tokens a multiple of block)."""
        raise NotImplementedError

    def decode(self, enc: object) -> torch.Tensor:
        raise NotImplementedError

    def stored(self, enc: object) -> list[torch.Tensor]:
        return leaf_tensors(enc)


class PassthroughCodec(Codec):
    def encode(self, x, key):
        return x.clone()

    def decode(self, enc):
        return enc


class KiviCodec(Codec):
    def __init__(self, bits: int, group: int, window: int):
        from transformers.cache_utils import QuantoQuantizedLayer  # heavy: imports optimum-quanto

        self.block = group
        self._quanto = QuantoQuantizedLayer(nbits=bits, axis_key=0, axis_value=0, q_group_size=group,
                                            residual_length=window)

    def encode(self, x, key):
        # quanto's axis 0 groups ``group`` consecutive elements of the last dim: channels of a token for
        # values; for keys the tensor is transposed first, so a group is ``group`` tokens of one channel
        if key:
            x = x.transpose(-1, -2)
        return self._quanto._quantize(x.contiguous(), axis=0), key

    def decode(self, enc):
        q, key = enc
        x = self._quanto._dequantize(q)
        return x.transpose(-1, -2) if key else x


# ---------------------------------------------------------------- own uniform quantizer (any 1-8 bits)
def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes < 2**bits -> a bit stream: 8 codes in ``bits`` bytes."""
    flat = q.reshape(-1).to(torch.int64)
    flat = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 8)).reshape(-1, 8)
    word = (flat << (bits * torch.arange(8, dtype=torch.int64))).sum(-1, keepdim=True)
    return ((word >> (8 * torch.arange(bits, dtype=torch.int64))) & 255).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    word = (packed.to(torch.int64) << (8 * torch.arange(bits, dtype=torch.int64))).sum(-1, keepdim=True)
    codes = (word >> (bits * torch.arange(8, dtype=torch.int64))) & ((1 << bits) - 1)
    return codes.reshape(-1)[:n]


def _grouped(x: torch.Tensor, group: int, per_channel: bool) -> torch.Tensor:
    """``[B, H, T, D]`` -> ``[..., group]``: per channel = groups of tokens, per token = groups of channels."""
    if per_channel:
        x = x.transpose(-1, -2)  # [B, H, D, T]
    return x.reshape(*x.shape[:-1], x.shape[-1] // group, group)


def _ungrouped(g: torch.Tensor, per_channel: bool) -> torch.Tensor:
    x = g.reshape(*g.shape[:-2], -1)
    return x.transpose(-1, -2) if per_channel else x


class KVQuantCodec(Codec):
    def __init__(self, bits: int, group: int, outliers: float | None):
        self.bits, self.block, self.outliers = bits, group, outliers

    def encode(self, x, key):
        if self.outliers:
            a = x.abs().reshape(-1)
            thr = torch.topk(a, max(1, int(round(a.numel() * self.outliers)))).values[-1]
            mask = x.abs() >= thr
        else:
            mask = torch.zeros_like(x, dtype=torch.bool)
        idx = mask.reshape(-1).nonzero().squeeze(-1)
        sparse = (idx.to(torch.int32), x.reshape(-1)[idx].to(torch.float16))
        g = _grouped(x, self.block, per_channel=key)
        gm = _grouped(mask, self.block, per_channel=key)
        lo = torch.where(gm, torch.inf, g).amin(-1, keepdim=True)
        hi = torch.where(gm, -torch.inf, g).amax(-1, keepdim=True)
        lo, hi = torch.nan_to_num(lo, posinf=0.0), torch.nan_to_num(hi, neginf=0.0)
        scale = ((hi - lo) / ((1 << self.bits) - 1)).clamp_min(1e-8)
        q = ((g.clamp(lo, hi) - lo) / scale).round().to(torch.uint8)
        meta = (scale.to(torch.float16), lo.to(torch.float16))
        return {"codes": pack(q, self.bits), "meta": meta, "sparse": sparse, "shape": tuple(g.shape),
                "key": key, "dtype": x.dtype}

    def decode(self, enc):
        shape, key = enc["shape"], enc["key"]
        n = 1
        for s in shape:
            n *= s
        scale, lo = (m.to(enc["dtype"]) for m in enc["meta"])
        g = unpack(enc["codes"], self.bits, n).reshape(shape).to(enc["dtype"]) * scale + lo
        x = _ungrouped(g, per_channel=key).contiguous()
        idx, vals = enc["sparse"]
        x.view(-1)[idx.to(torch.int64)] = vals.to(x.dtype)
        return x


class ForgeCodec(Codec):
    def __init__(self, energy: float, block: int):
        self.energy, self.block = energy, block

    def encode(self, x, key):
        b, h, t, d = x.shape
        m = x.permute(0, 2, 1, 3).reshape(b, t // self.block, self.block, h * d)  # chunks of all heads side by side
        u, sv, vh = torch.linalg.svd(m, full_matrices=False)  # one batched call
        share = (sv ** 2).cumsum(-1) / (sv ** 2).sum(-1, keepdim=True).clamp_min(1e-30)
        ranks = ((share < self.energy).sum(-1).amax(0) + 1).tolist()  # per chunk (max over the batch)
        chunks = [((u[:, i, :, :r] * sv[:, i, None, :r]).contiguous(), vh[:, i, :r, :].contiguous())
                  for i, r in enumerate(ranks)]
        return {"chunks": chunks, "heads": h}

    def decode(self, enc):
        h = enc["heads"]
        parts = []
        for us, vh in enc["chunks"]:
            m = us @ vh  # [B, n, H*D]
            parts.append(m.reshape(m.shape[0], m.shape[1], h, -1).permute(0, 2, 1, 3))
        return torch.cat(parts, dim=-2)

    def stored(self, enc):
        return leaf_tensors(enc["chunks"])
