"""A CSI client on grpcio, the gRPC library of Python (and, through its C
core, of Ruby, PHP and C++), which derives `:authority` from the socket's
path. Messages are written as protobuf bytes by hand, so nothing but
grpcio is needed. Usage: grpc_python.py SOCKET NODE_ID"""

import sys

import grpc


def call(channel, method, request=b""):
    rpc = channel.unary_unary(
        method, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    return rpc(request, timeout=10)


def string_field(number, value):
    data = value.encode()
    return bytes([number << 3 | 2, len(data)]) + data


socket, node_id = sys.argv[1], sys.argv[2]
for options in [
    [],  # grpcio's own: the path, percent-encoded
    [("grpc.default_authority", socket)],  # grpc-java's: the path itself
]:
    with grpc.insecure_channel("unix://" + socket, options=options) as channel:
        info = call(channel, "/csi.v1.Identity/GetPluginInfo")
        assert b"stowage.csi.dev" in info, info
        call(channel, "/csi.v1.Identity/Probe")
        node = call(channel, "/csi.v1.Node/NodeGetInfo")
        assert node_id.encode() in node, node
        # Deleting a volume that does not exist succeeds (CSI: idempotent).
        call(channel, "/csi.v1.Controller/DeleteVolume", string_field(1, "absent"))
        try:
            call(channel, "/csi.v1.Controller/DeleteVolume", string_field(1, ""))
            raise AssertionError("an empty volume id was accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
print("grpcio ok")
