"""The POT / APOT grids a fake-quantized checkpoint declares (``ptq_deploy.json``'s ``fake_quant``): the levels,
what was stored, and the check that a weight tensor holds only those levels (``check_levels``). The snapping
itself is ``ptq_deploy.compress.fakequant``; methods and references are described there.
"""

from __future__ import annotations

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


def snap(u, grid):
    """Each normalized value in ``u`` (within [-1, 1]) to its nearest grid level."""
    import torch

    return grid[torch.bucketize(u, (grid[1:] + grid[:-1]) / 2)]


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
    near = snap(u, grid)
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

