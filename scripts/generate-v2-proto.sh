#!/usr/bin/env bash
# Regenerate the Python modules of Triton's gRPC protocol, app/v2/proto/grpc_service.proto and
# model_config.proto (copied unmodified from triton-inference-server/common, protobuf/; a
# superset of KServe's grpc_predict_v2.proto: same package, same service, same messages and
# field numbers, plus Triton's extensions). Needs the dev extra's grpcio-tools. Run from
# anywhere; commit the generated files with the .proto files.
#
# Two rewrites of protoc's output:
# - The messages are put in a descriptor pool of their own instead of protobuf's default one:
#   the default pool refuses a second definition of `inference.ModelInferRequest`, which
#   tritonclient's own stubs also define, so with the default pool a process (a test session,
#   an application that embeds the server) could not import both. grpc_service.proto imports
#   model_config.proto, so both go into the one pool, model_config_pb2's.
# - protoc writes `import model_config_pb2` (a top-level module); here they are app.v2.proto's.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
proto=app/v2/proto
"$python" -m grpc_tools.protoc -I "$proto" --python_out="$proto" --grpc_python_out="$proto" \
    --pyi_out="$proto" "$proto/grpc_service.proto" "$proto/model_config.proto"
rm -f "$proto/model_config_pb2_grpc.py"  # model_config.proto declares no service

rewrite() {  # file, sed expression, the line that must then be there
    sed -i "$2" "$1"
    grep -q "$3" "$1" || { echo "rewrite of $1 failed: no line matching $3" >&2; exit 1; }
}
rewrite "$proto/model_config_pb2.py" \
    's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = POOL.AddSerializedFile(/' \
    '^POOL = _descriptor_pool.DescriptorPool()$'
rewrite "$proto/grpc_service_pb2.py" \
    's/^import model_config_pb2 as model__config__pb2$/from app.v2.proto import model_config_pb2 as model__config__pb2/' \
    '^from app.v2.proto import model_config_pb2 as model__config__pb2$'
rewrite "$proto/grpc_service_pb2.py" \
    's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/POOL = model__config__pb2.POOL\nDESCRIPTOR = POOL.AddSerializedFile(/' \
    '^POOL = model__config__pb2.POOL$'
rewrite "$proto/grpc_service_pb2.pyi" \
    's/^import model_config_pb2 as _model_config_pb2$/from app.v2.proto import model_config_pb2 as _model_config_pb2/' \
    '^from app.v2.proto import model_config_pb2 as _model_config_pb2$'
rewrite "$proto/grpc_service_pb2_grpc.py" \
    's/^import grpc_service_pb2 as grpc__service__pb2$/from app.v2.proto import grpc_service_pb2 as grpc__service__pb2/' \
    '^from app.v2.proto import grpc_service_pb2 as grpc__service__pb2$'
echo "regenerated $proto/{grpc_service,model_config}_pb2.py{,i} and grpc_service_pb2_grpc.py"
