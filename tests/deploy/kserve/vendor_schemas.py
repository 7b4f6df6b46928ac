#!/usr/bin/env python3
"""Writes the validation schemas of KServe's published CRDs that tests/deploy/test_kserve.py uses.

Source: github.com/kserve/kserve, tag v0.20.0 (commit 1fb781055dd1567164358233e1125142ca6ef1fe),
config/crd/full/serving.kserve.io_inferenceservices.yaml and
config/crd/full/serving.kserve.io_servingruntimes.yaml (Apache License 2.0, as this project).
What is kept: each CRD's v1beta1 (or v1alpha1) ``openAPIV3Schema`` for ``spec``, without the
``description`` texts (they do not validate anything and are most of the bytes) and without
``status``, written as gzipped JSON.

    python tests/deploy/kserve/vendor_schemas.py CRD_DIR   # CRD_DIR: a checkout's config/crd/full
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
CRDS = {
    "serving.kserve.io_inferenceservices.yaml": ("v1beta1", "inferenceservice-v1beta1.schema.json.gz"),
    "serving.kserve.io_servingruntimes.yaml": ("v1alpha1", "servingruntime-v1alpha1.schema.json.gz"),
}


def without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def main(crd_dir: Path) -> None:
    for source, (version, target) in CRDS.items():
        crd = yaml.safe_load((crd_dir / source).read_text())
        (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
        schema = without_descriptions(entry["schema"]["openAPIV3Schema"])
        schema["properties"].pop("status", None)
        text = json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()
        (HERE / target).write_bytes(gzip.compress(text, mtime=0))
        print(f"{target}: {crd['spec']['names']['kind']} {version}, {len(text)} bytes of JSON")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
