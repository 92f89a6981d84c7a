"""Results: one envelope every result shares (``envelope``) and atomic writes (``io``).

Read any result file back, whatever its kind, with ``ptq_deploy.results.kinds.read_result``.
"""

from ptq_deploy.results.envelope import SCHEMA_VERSION, Identity, ResultEnvelope, safe_name
from ptq_deploy.results.io import (atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text,
                                  check_output_dir, replace_dir, temp_sibling)

__all__ = ["SCHEMA_VERSION", "Identity", "ResultEnvelope", "safe_name",
           "atomic_dir", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "check_output_dir", "replace_dir",
           "temp_sibling"]
