"""File formats services exchange through the artifact store, each read and written in one place.

`splits`: NPZ splits (`x` FP32 [N, F], `y`) and the other NPZ inputs, read with caps against decompression
bombs and without unpickling. It needs numpy, which every service that handles data installs;
`gallery_common` itself does not import this package.
"""

from .splits import (
    NpzContents,
    NpzMissingArrays,
    NpzRefused,
    NpzUnreadable,
    Split,
    default_max_bytes,
    read_features,
    read_npz,
    read_split,
    write_split,
)

__all__ = [
    "NpzContents",
    "NpzMissingArrays",
    "NpzRefused",
    "NpzUnreadable",
    "Split",
    "default_max_bytes",
    "read_features",
    "read_npz",
    "read_split",
    "write_split",
]
