#!/usr/bin/env bash
# Regenerate the Python modules of app/v2/proto/grpc_predict_v2.proto (needs the dev extra's
# grpcio-tools). Run from anywhere; commit the three generated files with the .proto.
#
# The messages are put in a descriptor pool of their own instead of protobuf's default one:
# the default pool refuses a second definition of `inference.ModelInferRequest`, which
# tritonclient's own stubs also define, so with the default pool a process (a test session, an
# application that embeds the server) could not import both.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
"$python" -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. \
    app/v2/proto/grpc_predict_v2.proto
generated=app/v2/proto/grpc_predict_v2_pb2.py
sed -i 's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = POOL.AddSerializedFile(/' "$generated"
grep -q '^POOL = _descriptor_pool.DescriptorPool()$' "$generated" || { echo "pool rewrite failed" >&2; exit 1; }
echo "regenerated app/v2/proto/grpc_predict_v2_pb2{,_grpc}.py{,i}"
