"""A checkpoint's files: the safetensors headers (never the tensor data) and the shard index.

``read_safetensors_header`` reports problems (truncated file, corrupt header, sizes that disagree
with dtype x shape) in the returned object instead of raising; ``tensors`` is the name -> entry map
every other part of the project uses (inspect, the roofline's byte counts).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from pydantic import BaseModel

# bytes per element of each safetensors dtype (the one table; F8_E4M3FN is an alias some writers use)
DTYPE_BYTES: dict[str, float] = {
    "F8_E4M3FN": 1,
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "F4": 0.5, "F6_E2M3": 0.75,
    "F6_E3M2": 0.75,
}


class TensorEntry(BaseModel):
    name: str
    dtype: str
    shape: list[int]
    nbytes: int
    file: str
    truncated: bool = False

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class SafetensorsFile(BaseModel):
    name: str
    size_bytes: int
    header_bytes: int = 0
    data_bytes: int = 0  # what the header's offsets require
    metadata: dict[str, str] = {}
    tensors: list[TensorEntry] = []
    problem: str | None = None  # truncated / corrupt header / size mismatch

    @property
    def truncated(self) -> bool:
        return 8 + self.header_bytes + self.data_bytes > self.size_bytes


def read_safetensors_header(path: Path) -> SafetensorsFile:
    """Parse a safetensors file's header (8-byte little-endian length + JSON) and check its offsets
    against the file size, without reading any tensor data. Problems are reported, not raised."""
    path = Path(path)
    size = path.stat().st_size
    f = SafetensorsFile(name=path.name, size_bytes=size)
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            f.problem = f"{path.name} is truncated: {size} bytes, not even a header length"
            return f
        n = struct.unpack("<Q", head)[0]
        if n > size - 8:
            f.problem = f"{path.name} is truncated or corrupt: header claims {n} bytes, file has {size}"
            return f
        try:
            header = json.loads(fh.read(n))
        except ValueError as e:
            f.problem = f"{path.name} has a corrupt header: {e}"
            return f
    f.header_bytes = n
    f.metadata = header.pop("__metadata__", None) or {}
    avail = size - 8 - n
    end_max = 0
    for name, info in header.items():
        try:
            start, end = (int(x) for x in info["data_offsets"])
            dtype, shape = str(info["dtype"]), [int(d) for d in info["shape"]]
        except (KeyError, TypeError, ValueError):
            f.problem = f"{path.name} has a corrupt header entry for {name}"
            continue
        end_max = max(end_max, end)
        f.tensors.append(TensorEntry(name=name, dtype=dtype, shape=shape, nbytes=end - start, file=path.name,
                                     truncated=end > avail))
    f.data_bytes = end_max
    if f.truncated:
        cut = sum(t.truncated for t in f.tensors)
        f.problem = (f"{path.name} is truncated: its header needs {8 + n + end_max} bytes, the file has {size} "
                     f"({cut} of {len(f.tensors)} tensors cut off)")
    else:
        bad = [t for t in f.tensors if t.dtype in DTYPE_BYTES and t.nbytes != int(t.numel * DTYPE_BYTES[t.dtype])]
        if bad:
            t = bad[0]
            f.problem = (f"{path.name}: {len(bad)} tensors' byte sizes disagree with dtype x shape "
                         f"(e.g. {t.name}: {t.dtype}{t.shape} in {t.nbytes} bytes)")
    return f


def weight_files(path: Path) -> tuple[list[Path], list[str]]:
    """The checkpoint's safetensors files, and the shards its index names that are missing."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    missing: list[str] = []
    for idx in path.glob("*.safetensors.index.json"):
        try:
            wm = json.loads(idx.read_text()).get("weight_map") or {}
        except ValueError:
            missing.append(f"{idx.name} (corrupt index)")
            continue
        missing += sorted({s for s in wm.values() if not (path / s).is_file()})
    return files, missing


def tensors(path: Path) -> dict[str, TensorEntry]:
    """Every tensor of a checkpoint directory by name, from the headers of its safetensors files."""
    out: dict[str, TensorEntry] = {}
    for f in weight_files(path)[0]:
        for t in read_safetensors_header(f).tensors:
            out.setdefault(t.name, t)
    return out
