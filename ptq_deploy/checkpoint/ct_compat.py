"""Read int3 checkpoints (any bit width that does not divide 32) written by the compress environment's
compressed-tensors (>= 0.19) with the runtime's older one (0.17, vLLM's pin).

0.19 packs such weights densely (value ``i`` at bit ``i x bits`` of the row, ``ceil(n x bits / 32)`` words);
0.17 reads ``32 // bits`` values per word and so gets the wrong shape (e.g. 180 of 192 inputs). For 2, 4
and 8 bits the two layouts are the same. ``dense_unpack()`` makes the reader take the layout the packed
width says, wherever transformers decompresses a checkpoint in the runtime (the HF eval backend).
"""

from __future__ import annotations

import math
from contextlib import contextmanager


def unpack_dense(value, num_bits: int, n: int, packed_dim: int = 1):
    """Densely packed int32 words -> ``n`` signed int8 values per row (along ``packed_dim``)."""
    import torch

    v = value if packed_dim == 1 else value.transpose(0, 1)
    words = torch.nn.functional.pad(v.to(torch.int64) & 0xFFFFFFFF, (0, 1))  # unsigned, one spare word
    start = torch.arange(n, device=v.device) * num_bits
    word, off = start // 32, start % 32
    bits = (words[:, word] >> off) | (words[:, word + 1] << (32 - off))
    out = ((bits & ((1 << num_bits) - 1)) - (1 << (num_bits - 1))).to(torch.int8)
    return out if packed_dim == 1 else out.transpose(0, 1)


def is_dense(width: int, num_bits: int, n: int) -> bool:
    """Is a packed width of ``width`` words for ``n`` values the dense layout (and not the other one)?"""
    return bool(32 % num_bits) and width == math.ceil(n * num_bits / 32) != math.ceil(n / (32 // num_bits))


@contextmanager
def dense_unpack():
    """While active, compressed-tensors' pack-quantized decompressor also reads the dense layout."""
    try:
        from compressed_tensors.compressors.pack_quantized import base
    except ImportError:  # another compressed-tensors layout: nothing to adapt
        yield
        return
    original = base.unpack_from_int32

    def unpack(value, num_bits, shape, packed_dim=1):
        n = int(shape[packed_dim]) if len(shape) == 2 else None
        if value.ndim == 2 and n and is_dense(value.shape[packed_dim], num_bits, n):
            return unpack_dense(value, num_bits, n, packed_dim)
        return original(value, num_bits, shape, packed_dim)

    base.unpack_from_int32 = unpack
    try:
        yield
    finally:
        base.unpack_from_int32 = original
