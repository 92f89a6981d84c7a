"""docs/experiment-file.md is what the schema says (regenerate: python -m ptq_deploy.suite.reference)."""

from pathlib import Path

import yaml

from ptq_deploy.suite import reference
from ptq_deploy.suite.experiment import Experiment

DOC = Path(__file__).resolve().parent.parent / "docs" / "experiment-file.md"


def test_the_reference_is_the_schema():
    assert DOC.read_text() == reference.markdown(), "regenerate: python -m ptq_deploy.suite.reference > " + str(DOC)


def test_every_key_of_the_reference_is_a_key_the_schema_takes(tmp_path):
    keys = [k for k, *_ in reference.rows(Experiment)]
    assert {"models[].engine.kv_cache_dtype", "compress.schemes.NAME.num_samples", "report.min_recovery"} <= set(keys)
    doc = {"name": "x", "models": [{"name": "m", "source": "default"}], "schemes": ["BF16"]}
    for key in keys:  # setting a leaf key by its documented path validates (a wrong path is an unknown key)
        if key.endswith((".NAME", "[]")) or any(k.startswith(key + ".") or k.startswith(key + "[]") for k in keys):
            continue
        parts, node, data = key.replace("[]", ".0").split("."), None, yaml.safe_load(yaml.safe_dump(doc))
        node = data
        for p in parts[:-1]:
            p = "BF16" if p == "NAME" else p
            node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
        node.setdefault(parts[-1], None)
        errors = []
        try:
            Experiment.model_validate(data)
        except Exception as e:  # a wrong value type is fine here; an unknown key is not
            errors = [x for x in getattr(e, "errors", lambda: [])() if x["type"] == "extra_forbidden"]
        assert not errors, (key, errors)
