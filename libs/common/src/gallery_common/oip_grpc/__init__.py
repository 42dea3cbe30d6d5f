"""The Open Inference Protocol (v2) over gRPC: KServe's `inference.GRPCInferenceService`.

`grpc_predict_v2.proto` is KServe's file, unchanged; the `_pb2` modules are generated from it by
`scripts/gen_oip_grpc.py`. `codec` turns its messages into what the REST codec
(`gallery_common.contracts.oip`) reads and writes, so both transports validate and answer alike;
`server` holds what the model server's and the gateway's gRPC fronts share (the server, the token
check, GalleryErrors as gRPC status codes). Needs the `grpc` extra (grpcio).
"""
