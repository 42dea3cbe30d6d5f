"""File formats services exchange through the artifact store, each read and written in one place.

`splits`: NPZ splits (`x` FP32 [N, F], `y`) and the other NPZ inputs, read with caps against decompression
bombs and without unpickling. It needs numpy, which every service that handles data installs;
`gallery_common` itself does not import this package.

`serving_metrics`: the model servers' and the gateway's serving metrics (names, `Outcome` values, which
outcomes are errors), read from a `/metrics` page into counts per model version and variant, with one
counter-reset rule for windows and one canary-vs-baseline comparison.

`oip`: the Open Inference Protocol v2 codec: infer requests and responses as JSON and as Triton's binary
tensors (`Inference-Header-Content-Length`), the datatype table, and the top class of a response.

`registry`: what the registry's REST API answers (`ModelPublic`, `VersionPublic` with its artifacts by
role, `AliasPublic`) and `RegistryReader`, the reads its store, its REST client and test fakes all offer.
"""

from .oip import (
    INFERENCE_HEADER_LENGTH,
    InferRequest,
    InferRequestError,
    InferResponse,
    ProtocolError,
    TensorSpec,
    decode_infer_response,
    decode_tensor,
    encode_infer_request,
    encode_infer_response,
    parse_header_length,
    parse_infer_request,
    response_top_classes,
    top_classes,
)
from .registry import (
    AliasPublic,
    ArtifactPublic,
    ArtifactRole,
    ModelPublic,
    RegistryReader,
    VersionPublic,
    VersionStatus,
)
from .serving_metrics import (
    CanaryComparison,
    Outcome,
    Scrape,
    SeriesKey,
    ServingCounts,
    ServingPage,
    parse_page,
)
from .splits import (
    NpzContents,
    NpzMissingArrays,
    NpzRefused,
    NpzUnreadable,
    Split,
    default_max_bytes,
    is_text_array,
    read_features,
    read_npz,
    read_split,
    write_split,
)

__all__ = [
    "INFERENCE_HEADER_LENGTH",
    "AliasPublic",
    "ArtifactPublic",
    "ArtifactRole",
    "CanaryComparison",
    "InferRequest",
    "InferRequestError",
    "InferResponse",
    "ModelPublic",
    "NpzContents",
    "NpzMissingArrays",
    "NpzRefused",
    "NpzUnreadable",
    "Outcome",
    "ProtocolError",
    "RegistryReader",
    "Scrape",
    "SeriesKey",
    "ServingCounts",
    "ServingPage",
    "Split",
    "TensorSpec",
    "VersionPublic",
    "VersionStatus",
    "decode_infer_response",
    "decode_tensor",
    "default_max_bytes",
    "encode_infer_request",
    "encode_infer_response",
    "is_text_array",
    "parse_header_length",
    "parse_infer_request",
    "parse_page",
    "read_features",
    "read_npz",
    "read_split",
    "response_top_classes",
    "top_classes",
    "write_split",
]
