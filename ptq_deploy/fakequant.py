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
from typing import Literal

from pydantic import BaseModel

Method = Literal["pot", "apot"]
SEARCH_POINTS = 20  # clipping ratios tried per group
TOLERANCE = 2.0 ** -7  # relative distance to a level a stored 16-bit value may have (bf16 rounds at 2^-8)
IGNORE = ["lm_head"]  # as the llmcompressor recipes: the output head stays 16-bit


class FakeQuantSpec(BaseModel):
    """What to quantize to (from a scheme): method, bits per weight code, group size, APOT terms."""

    method: Method
    bits: int
    group_size: int
    k_terms: int = 1
    ignore: list[str] = IGNORE


class FakeQuant(FakeQuantSpec):
    """What was done (``ptq_deploy.json``'s ``fake_quant``): the declared grid and the codes' true size."""

    levels: list[float]  # the non-negative normalized levels (0 .. 1); the grid is +/- these
    layers: int
    params: int  # weights snapped (the targeted Linear layers)
    code_bytes: int  # bits x params / 8: what the codes would take packed
    scale_bytes: int  # one bfloat16 scale per group
    stored_bytes: int  # what these weights take as stored (16-bit)
    weight_rel_error: float  # ||W - Q|| / ||W|| over the targeted weights
    search_points: int = SEARCH_POINTS

    @property
    def bits_per_weight(self) -> float:
        """Effective bits per targeted weight: codes + scales."""
        return (self.code_bytes + self.scale_bytes) * 8 / self.params if self.params else 0.0

    def effective_bytes(self, tensor_bytes: int) -> int:
        """The checkpoint's size with the targeted weights as codes + scales instead of 16-bit values."""
        return tensor_bytes - self.stored_bytes + self.code_bytes + self.scale_bytes

    def describe(self) -> str:
        terms = f", {self.k_terms} terms" if self.method == "apot" else ""
        return f"{self.bits}-bit {self.method.upper()} grid{terms}, group {self.group_size}"


def magnitudes(method: Method, bits: int, k_terms: int = 1) -> list[float]:
    """The non-negative levels of a ``bits``-bit grid (one bit is the sign), ascending, maximum 1."""
    b = bits - 1
    if b < 1:
        raise ValueError(f"{method} needs at least 2 bits, not {bits}")
    k = 1 if method == "pot" else k_terms
    if not 1 <= k <= b:
        raise ValueError(f"APOT with {bits} bits takes 1 to {b} terms, not {k}")
    shares = [b // k + (i < b % k) for i in range(k)]  # magnitude bits per term
    sums = {0.0}
    for i, n in enumerate(shares):
        term = [0.0] + [2.0 ** -(i + j * k) for j in range(2 ** n - 1)]
        sums = {s + t for s in sums for t in term}
    top = max(sums)
    return sorted(s / top for s in sums)


def signed_grid(levels: list[float]):
    import torch  # heavy; the callers already run torch

    mags = torch.tensor(levels, dtype=torch.float32)
    return torch.cat([-mags.flip(0)[:-1], mags]) if levels[0] == 0 else torch.cat([-mags.flip(0), mags])


def _snap(u, grid):
    """Each normalized value in ``u`` (within [-1, 1]) to its nearest grid level."""
    import torch

    return grid[torch.bucketize(u, (grid[1:] + grid[:-1]) / 2)]


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
        q = _snap((x / safe).clamp(-1, 1), grid) * scale
        err = (q - x).square().sum(1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, q, best)
    return best.reshape(out_f, in_f)


def quantize_model(model, spec: FakeQuantSpec) -> FakeQuant:
    """Snap every targeted Linear of ``model`` in place; returns what was done (sizes, error)."""
    import torch

    from ptq_deploy.schemes import linear_targets

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


class LevelCheck(BaseModel):
    groups: int
    off_grid: int = 0  # groups with a value farther than TOLERANCE from every level x the group's scale
    too_many: int = 0  # groups with more than 2^bits distinct values
    max_distinct: int = 0
    example: str = ""

    @property
    def problems(self) -> list[str]:
        out = []
        if self.off_grid:
            out.append(f"{self.off_grid} of {self.groups} groups have values off the declared grid ({self.example})")
        if self.too_many:
            out.append(f"{self.too_many} of {self.groups} groups have more than the allowed distinct values "
                       f"(up to {self.max_distinct})")
        return out


def check_levels(w, fq: FakeQuant) -> LevelCheck:
    """Does every group of ``w`` [out, in] hold at most ``2^bits`` distinct values, each ``level x scale`` for
    a declared level (scale: the group's largest magnitude, which the top level 1 stores exactly)?"""
    import torch

    x = w.float().reshape(-1, fq.group_size)
    grid = signed_grid(fq.levels)
    scale = x.abs().amax(1, keepdim=True)
    u = x / torch.where(scale > 0, scale, torch.ones_like(scale))
    near = _snap(u, grid)
    off = ((u - near).abs() > TOLERANCE * near.abs() + 1e-6).any(1)
    s = x.sort(1).values
    distinct = (s[:, 1:] != s[:, :-1]).sum(1) + 1
    many = distinct > 2 ** fq.bits
    res = LevelCheck(groups=x.shape[0], off_grid=int(off.sum()), too_many=int(many.sum()),
                     max_distinct=int(distinct.max()) if x.numel() else 0)
    if res.off_grid:
        g = int(off.nonzero()[0])
        j = int(((u[g] - near[g]).abs() - TOLERANCE * near[g].abs()).argmax())
        res.example = f"e.g. group {g}: {float(u[g, j]):.4g} x scale, nearest level {float(near[g, j]):.4g}"
    return res

