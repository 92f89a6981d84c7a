"""Power-of-two (POT) and additive power-of-two (APOT) weight quantization, fake-quantized: every targeted
Linear weight is snapped, per group of ``group_size`` inputs, to ``scale x level`` with the levels below,
and stored 16-bit, so any dense loader (vLLM, transformers) runs it. A research format for quality
measurements only: no kernel stores or multiplies these codes.

- POT (Miyashita, Lee, Murmann 2016, "Convolutional Neural Networks using Logarithmic Data
  Representation", arXiv:1603.01025): magnitudes ``{0, 2^0, 2^-1, ..., 2^-(2^(b-1)-2)}`` and a sign bit,
  ``2^b - 1`` levels for ``b`` bits.
- APOT (Li, Dong, Wang, ICLR 2020, "Additive Powers-of-Two Quantization: An Efficient Non-uniform
  Discretization for Neural Networks", arXiv:1909.13144): each magnitude is a sum of ``k`` terms, term ``i``
  one of ``{0} + {2^-(i + j*k)}`` with its share of the ``b - 1`` magnitude bits, normalized to a maximum of 1
  (``k = 1`` is POT; with 3 bits and ``k = 2`` the levels are uniform, 0, 1/3, 2/3, 1).
- Scale: per group, the clipping ratio ``r`` in ``[0.5, 1]`` (``SEARCH_POINTS`` candidates) minimizing the
  group's squared error, ``scale = r x max|w|`` rounded to bfloat16, so the largest code, ``1 x scale``, is
  stored exactly and a checker recovers the scale as the group's largest magnitude (``check_levels``).
"""

from __future__ import annotations

import math

from ptq_deploy.checkpoint.grid import SEARCH_POINTS, FakeQuant, FakeQuantSpec, magnitudes, signed_grid, snap
from ptq_deploy.compress.schemes import linear_targets


def quantize_weight(w, spec: FakeQuantSpec, levels: list[float]):
    """``w`` [out, in] snapped per group (float32 result, scales bfloat16-exact)."""
    import torch

    out_f, in_f = w.shape
    x = w.detach().float().reshape(-1, spec.group_size)
    grid = signed_grid(levels)
    amax = x.abs().amax(1, keepdim=True)
    best_err = torch.full_like(amax, math.inf)
    best = torch.zeros_like(x)
    for r in torch.linspace(1.0, 0.5, SEARCH_POINTS).tolist():
        scale = (amax * r).to(torch.bfloat16).float()
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = snap((x / safe).clamp(-1, 1), grid) * scale
        err = (q - x).square().sum(1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, q, best)
    return best.reshape(out_f, in_f)


def quantize_model(model, spec: FakeQuantSpec) -> FakeQuant:
    """Snap every targeted Linear of ``model`` in place; returns what was done (sizes, error)."""
    import torch

    levels = magnitudes(spec.method, spec.bits, spec.k_terms)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    targets = linear_targets({n: m.in_features for n, m in linears.items()}, spec.ignore)
    params = code = scales = err2 = norm2 = 0
    with torch.no_grad():
        for name in targets:
            w = linears[name].weight
            q = quantize_weight(w, spec, levels)
            err2 += float((q - w.float()).square().sum())
            norm2 += float(w.float().square().sum())
            w.copy_(q.to(w.dtype))
            params += w.numel()
            code += math.ceil(w.numel() * spec.bits / 8)
            scales += 2 * w.numel() // spec.group_size
    return FakeQuant(**spec.model_dump(), levels=levels, layers=len(targets), params=params, code_bytes=code,
                     scale_bytes=scales, stored_bytes=2 * params, weight_rel_error=math.sqrt(err2 / max(norm2, 1e-30)))
