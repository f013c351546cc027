"""GetServerInfo as another program sees it: ModelInfo.path is the model's file name, never a server path."""

from __future__ import annotations

import grpc

from neqforce.models import bundled_model_path
from neqforce.v1 import force_service_pb2 as pb
from neqforce.v1 import force_service_pb2_grpc as pb_grpc


def test_model_path_is_the_file_name_only(server):
    with grpc.insecure_channel(server.address) as channel:
        info = pb_grpc.ForceServiceStub(channel).GetServerInfo(pb.GetServerInfoRequest(), timeout=30)
    (model,) = info.models
    loaded_from = bundled_model_path().resolve()
    assert model.path == loaded_from.name == "voltage.onnx"
    assert "/" not in model.path and "\\" not in model.path
    assert str(loaded_from.parent) not in info.SerializeToString().decode("utf-8", "replace")
