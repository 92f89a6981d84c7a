"""The verifier of a fake-quantized (POT / APOT) checkpoint, keyed off ``ptq_deploy.json``'s ``fake_quant``
(such a checkpoint has no ``quantization_config``): every targeted Linear's weight is read (it is stored
dense, so the proof is in the values, not the dtypes) and each group must hold at most ``2^bits``
distinct values, each a declared level times the group's scale (``checkpoint.grid.check_levels``).
"""

from __future__ import annotations

from ptq_deploy.checkpoint import TensorEntry
from ptq_deploy.checkpoint.grid import check_levels
from ptq_deploy.compress.schemes import linear_targets
from ptq_deploy.inspection.architecture import Module

FLOAT16 = {"BF16", "F16", "F32"}


def verify_fake_quant(m: Module, t: dict[str, TensorEntry], ctx):
    """``(ignored by, (problems, storage))`` for one Linear under the checkpoint's declared grid."""
    fq = ctx.fake_quant
    ignored_by = next((p for p in fq.ignore if not linear_targets({m.name: 0}, [p])), None)
    if ignored_by is not None:
        return ignored_by, None
    w = t.get("weight")
    if w is None:
        return None, (["no weight tensor"], "")
    if w.dtype not in FLOAT16:
        return None, ([f"weight is {w.dtype}, not a dense (16/32-bit) tensor"], w.dtype)
    if len(w.shape) != 2 or w.shape[1] % fq.group_size:
        return None, ([f"group size {fq.group_size} does not divide weight shape {w.shape}"], w.dtype)
    values = ctx.read(w)  # the file stays open for the next layer's weight
    if values is None:
        return None, ([f"weight cannot be read: {w.file} does not open"], w.dtype)
    return None, (check_levels(values, fq).problems, f"{fq.describe()}, stored {w.dtype}")
