"""``ptq_deploy.json``: what ptq-deploy records in every checkpoint it writes (typed, read back typed).

Next to it, ``recipe.yaml`` holds the llmcompressor recipe that produced the weights, as
llm-compressor's own checkpoints carry it. A fake-quantized (POT / APOT) checkpoint has no recipe and no
``quantization_config``: ``fake_quant`` declares its grid and the codes' true size. A checkpoint written
before this schema (a whole compress result as ``ptq_deploy.json``) reads into the same model: only these
fields are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ptq_deploy.checkpoint.grid import FakeQuant
from ptq_deploy.checkpoint.quant import FORMAT_KINDS, from_recipe, modifiers
from ptq_deploy.data import CalibrationInfo
from ptq_deploy.models import ModelSource
from ptq_deploy.provenance import Provenance
from ptq_deploy.results.io import atomic_write_text

METADATA_FILE = "ptq_deploy.json"
RECIPE_FILE = "recipe.yaml"


class CheckpointMetadata(BaseModel):
    model_config = ConfigDict(extra="ignore")

    scheme: str
    description: str = ""
    group_size: int | None = None
    kv_cache: str = "none"
    source: ModelSource
    calibration: CalibrationInfo | None = None
    recipe: dict[str, Any] | None = None
    provenance: Provenance | None = None
    dequantized_from: str | None = None  # a dense copy of that quantized checkpoint (checkpoint.dequantize)
    fake_quant: FakeQuant | None = None  # POT / APOT: weights on a grid, stored 16-bit (quality only)

    @model_validator(mode="before")
    @classmethod
    def _from_compress_result(cls, data: Any) -> Any:
        """A version-2 compress result nests its identity; a version-1 one kept these at the top."""
        if isinstance(data, dict) and "scheme" not in data and isinstance(data.get("identity"), dict):
            data = {**data, "scheme": data["identity"].get("scheme"), "kv_cache": data["identity"].get("kv_cache")}
        return data

    @property
    def weight_method(self) -> str | None:
        """How the weights were quantized, for weight-only schemes (one line each on the bit-width curve): POT,
        APOT, AWQ, AutoRound, GPTQ (SpinQuant+GPTQ after rotations) or RTN (a recipe with only a
        QuantizationModifier), a float format by its name (NVFP4, MXFP4, MXFP8); None for a dense copy or a
        scheme that also quantizes activations."""
        if self.fake_quant is not None:
            return self.fake_quant.method.upper()
        if not self.recipe:
            return None
        q = from_recipe(self.recipe)
        if q.weights is None or q.input_activations is not None:
            return None
        if q.weight_kind in FORMAT_KINDS:
            return q.weight_kind.upper()
        names = {name for name, _ in modifiers(self.recipe)}
        rotated = "SpinQuant+" if "SpinQuantModifier" in names else "QuIP+" if "QuIPModifier" in names else ""
        for modifier, method in (("AWQModifier", "AWQ"), ("AutoRoundModifier", "AutoRound"), ("GPTQModifier", "GPTQ")):
            if modifier in names:
                return rotated + method
        return rotated + "RTN"

    def write(self, checkpoint: Path) -> None:
        atomic_write_text(Path(checkpoint) / METADATA_FILE, self.model_dump_json(indent=2) + "\n", force=True)
        if self.recipe:
            atomic_write_text(Path(checkpoint) / RECIPE_FILE, yaml.safe_dump(self.recipe, sort_keys=False),
                              force=True)


def read(checkpoint: Path) -> tuple[CheckpointMetadata | None, str | None]:
    """``(metadata, problem)``: ``(None, None)`` when the checkpoint has no ``ptq_deploy.json``."""
    f = Path(checkpoint) / METADATA_FILE
    if not f.is_file():
        return None, None
    try:
        return CheckpointMetadata.model_validate_json(f.read_text()), None
    except (OSError, ValueError, ValidationError) as e:
        return None, f"corrupt {METADATA_FILE}: {str(e).splitlines()[0]}"
