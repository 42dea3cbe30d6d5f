"""NPZ files, read and written in one place: the split format (`x` FP32 [N, F] raw features, or for a text
model `x` unicode strings [N], one text per row; `y` labels or targets) and the other NPZ inputs services
take (a data set, a batch job's input).

Every NPZ a service reads may come from an attacker. An NPZ is a zip of `.npy` members, and a member of a
few megabytes can inflate to gigabytes, so nothing is inflated before the sizes it declares (the zip
entry's uncompressed size and the `.npy` header's shape times itemsize) fit under the cap
(GALLERY_MAX_SPLIT_BYTES); each member is then read through a stream that stops at its declared size.
Object arrays are refused (loading one would unpickle it), and a split with missing or unexpected arrays
is refused too. Every refusal is an `NpzRefused` whose message names the file and the reason.

Blocking (decompression, file reads): call from a worker thread.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Literal

import numpy as np
import numpy.lib.format as npy_format

SPLIT_ARRAYS = ("x", "y")
CAP_SETTING = "GALLERY_MAX_SPLIT_BYTES"
_NPY = ".npy"
_READ_CHUNK = 1024 * 1024
_MAX_HEADER_BYTES = 10_000  # numpy's own default: a longer header is not one numpy would write
_FEATURE_KINDS = "biuf"
_LABEL_KINDS = "biufUS"

Source = bytes | bytearray | memoryview | Path


class NpzRefused(ValueError):
    """An NPZ file that will not be read; the message is `<source>: <reason>`."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class NpzUnreadable(NpzRefused):
    """Not an NPZ file numpy wrote without pickling: not a zip, corrupt, or holding object arrays."""

    def __init__(self, source: str, detail: str) -> None:
        super().__init__(source, f"not a readable NPZ file: {detail}")
        self.detail = detail


class NpzMissingArrays(NpzRefused):
    """The file lacks arrays it must have; `missing` and `found` name them."""

    def __init__(self, source: str, reason: str, missing: list[str], found: list[str]) -> None:
        super().__init__(source, reason)
        self.missing = missing
        self.found = found


@dataclass(frozen=True)
class NpzContents:
    """The arrays read (by name) and the name of every array in the file, read or not."""

    arrays: dict[str, np.ndarray]
    names: list[str]


@dataclass(frozen=True)
class Split:
    """One split: raw features `x` FP32 [N, F] (or, for a text model, unicode strings [N]) and labels or
    targets `y` [N] or [N, K]."""

    x: np.ndarray
    y: np.ndarray

    @property
    def is_text(self) -> bool:
        """The rows are texts (a numpy unicode array [N]), not numeric features."""
        return is_text_array(self.x)

    def __len__(self) -> int:
        return len(self.x)


def default_max_bytes() -> int:
    """The cap from the settings (GALLERY_MAX_SPLIT_BYTES)."""
    from gallery_common.settings import get_settings

    return get_settings().max_split_bytes


def read_split(source: Source, *, name: str | None = None, max_bytes: int | None = None) -> Split:
    """The split in `source` (NPZ bytes or a file): exactly `x` and `y`, `x` numeric [N, F] with N > 0 (as
    FP32), `y` one entry per row. NpzRefused names `name` (default: the file's name) and the reason."""
    label = _label(source, name)
    contents = _read(source, label, required=SPLIT_ARRAYS, optional=(), extra="refuse", kind="a split", cap=max_bytes)
    x = _features(contents.arrays["x"], label)
    return Split(x, _labels(contents.arrays["y"], x, label))


def read_features(
    source: Source, *, name: str | None = None, max_bytes: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """A split whose labels may be absent: `x` (as in `read_split`) and `y` when the file has it."""
    label = _label(source, name)
    contents = _read(source, label, required=("x",), optional=("y",), extra="refuse", kind="a split", cap=max_bytes)
    x = _features(contents.arrays["x"], label)
    y = contents.arrays.get("y")
    return x, (None if y is None else _labels(y, x, label))


def read_npz(
    source: Source,
    *,
    wanted: Collection[str],
    required: Collection[str] = (),
    name: str | None = None,
    max_bytes: int | None = None,
) -> NpzContents:
    """The arrays of `wanted` that the file has (every one of `required` must be there), with the caps and
    refusals of `read_split`. Arrays not wanted are never inflated, only named in `NpzContents.names`."""
    label = _label(source, name)
    optional = [n for n in wanted if n not in required]
    return _read(
        source, label, required=tuple(required), optional=optional, extra="ignore", kind="the file", cap=max_bytes
    )


def is_text_array(x: np.ndarray) -> bool:
    """`x` holds one text per row: a one-dimensional numpy unicode array."""
    return x.ndim == 1 and x.dtype.kind == "U"


def write_split(dest: Path | BinaryIO, x: np.ndarray, y: np.ndarray) -> None:
    """Write a split `read_split` reads back: `x` as contiguous FP32 (texts: a unicode array [N], from
    `str` rows or a unicode array) and `y`, uncompressed, nothing pickled."""
    labels = np.asarray(y)
    if labels.dtype.hasobject:
        raise ValueError(f"a split's y must not hold Python objects (got {labels.dtype})")
    features = _texts(x) if _holds_text(x) else np.ascontiguousarray(x, dtype=np.float32)
    if isinstance(dest, Path):
        with open(dest, "wb") as out:  # a file object: np.savez would add `.npz` to a name without it
            np.savez(out, x=features, y=labels)
    else:
        np.savez(dest, x=features, y=labels)


def _label(source: Source, name: str | None) -> str:
    if name is not None:
        return name
    return source.name if isinstance(source, Path) else "the NPZ file"


def _holds_text(x: np.ndarray) -> bool:
    values = np.asarray(x)
    return values.ndim == 1 and (values.dtype.kind == "U" or (values.dtype.hasobject and len(values) > 0))


def _texts(x: np.ndarray) -> np.ndarray:
    """Texts as a unicode array [N]; anything but `str` rows is a ValueError (it would be pickled or garbled)."""
    values = np.asarray(x)
    if values.dtype.hasobject:
        kinds = sorted({type(v).__name__ for v in values if not isinstance(v, str)})
        if kinds:
            raise ValueError(f"a text split's x must hold only str rows (found {', '.join(kinds)})")
        return np.array(values.tolist(), dtype=str)
    return np.ascontiguousarray(values)


def _features(x: np.ndarray, label: str) -> np.ndarray:
    if is_text_array(x):
        if len(x) == 0:
            raise NpzRefused(label, "the split holds no rows")
        return x
    if x.ndim != 2 or x.dtype.kind not in _FEATURE_KINDS:
        raise NpzRefused(label, f"x must be numeric [N, F] or texts (unicode [N]), got {x.dtype} {list(x.shape)}")
    if len(x) == 0:
        raise NpzRefused(label, "the split holds no rows")
    return x.astype(np.float32, copy=False)


def _labels(y: np.ndarray, x: np.ndarray, label: str) -> np.ndarray:
    if y.ndim == 0 or y.dtype.kind not in _LABEL_KINDS:
        raise NpzRefused(label, f"y must hold one number or label per row, got {y.dtype} {list(y.shape)}")
    if len(y) != len(x):
        raise NpzRefused(label, f"x has {len(x)} rows but y has {len(y)}")
    return y


def _quoted(names: Collection[str]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _read(
    source: Source,
    label: str,
    *,
    required: tuple[str, ...],
    optional: Collection[str],
    extra: Literal["refuse", "ignore"],
    kind: str,
    cap: int | None,
) -> NpzContents:
    limit = default_max_bytes() if cap is None else cap
    try:
        stream: BinaryIO = open(source, "rb") if isinstance(source, Path) else io.BytesIO(source)  # noqa: SIM115
    except OSError as exc:
        raise NpzUnreadable(label, exc.strerror or str(exc)) from None
    with stream:
        try:
            archive = zipfile.ZipFile(stream)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
            raise NpzUnreadable(label, f"not a zip archive ({exc})") from None
        with archive:
            members = _members(archive, label)
            wanted = _check_names(members, label, required, optional, extra, kind)
            _check_declared(wanted, label, limit)
            arrays: dict[str, np.ndarray] = {}
            budget = limit
            for array_name, info in wanted.items():
                arrays[array_name] = _read_member(archive, info, array_name, label, budget)
                budget -= arrays[array_name].nbytes
    return NpzContents(arrays, sorted(members))


def _members(archive: zipfile.ZipFile, label: str) -> dict[str, zipfile.ZipInfo]:
    """Array name (the member's name without `.npy`) to its entry; a name twice is refused."""
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        array_name = info.filename.removesuffix(_NPY)
        if array_name in members:
            # two entries under one name: which one a reader takes differs between readers
            raise NpzUnreadable(label, f"it holds two members named {info.filename!r}")
        members[array_name] = info
    return members


def _check_names(
    members: dict[str, zipfile.ZipInfo],
    label: str,
    required: tuple[str, ...],
    optional: Collection[str],
    extra: Literal["refuse", "ignore"],
    kind: str,
) -> dict[str, zipfile.ZipInfo]:
    found = sorted(members)
    missing = [n for n in required if n not in members]
    if missing:
        raise NpzMissingArrays(label, f"{kind} needs arrays {_quoted(required)}, found {found}", missing, found)
    allowed = [*required, *optional]
    unexpected = [n for n in found if n not in allowed]
    if unexpected and extra == "refuse":
        raise NpzRefused(label, f"{kind} holds only {_quoted(allowed)}; unexpected array(s) {unexpected}")
    wanted = {n: members[n] for n in allowed if n in members}
    for info in wanted.values():
        if not info.filename.endswith(_NPY):
            raise NpzUnreadable(label, f"member {info.filename!r} is not a .npy array")
        if info.flag_bits & 0x1:
            raise NpzUnreadable(label, f"member {info.filename!r} is encrypted")
    return wanted


def _check_declared(wanted: dict[str, zipfile.ZipInfo], label: str, limit: int) -> None:
    """Refuse, before inflating anything, members whose declared uncompressed sizes exceed the cap."""
    total = sum(info.file_size for info in wanted.values())
    if total > limit:
        names = ("array " if len(wanted) == 1 else "arrays ") + _quoted(list(wanted))
        verb = "declares" if len(wanted) == 1 else "declare"
        raise NpzRefused(
            label,
            f"{names} {verb} {_size(total)} uncompressed, over the {_size(limit)} an NPZ file may inflate "
            f"to ({CAP_SETTING})",
        )


class _BoundedReader:
    """A member's inflated bytes, refused the moment they run past the size its zip entry declares."""

    def __init__(self, raw: IO[bytes], declared: int, what: str, label: str) -> None:
        self._raw = raw
        self._left = declared
        self._declared = declared
        self._what = what
        self._label = label

    def read(self, size: int) -> bytes:
        data = self._raw.read(min(size, self._left + 1))
        self._take(len(data))
        return data

    def readinto(self, buffer: memoryview) -> int:
        count = self._raw.readinto(buffer[: self._left + 1])  # type: ignore[attr-defined]
        self._take(count)
        return count

    def _take(self, count: int) -> None:
        self._left -= count
        if self._left < 0:
            raise NpzRefused(
                self._label,
                f"array {self._what!r} inflates past the {_size(self._declared)} its zip entry declares",
            )

    @property
    def consumed(self) -> int:
        return self._declared - self._left

    def at_end(self) -> bool:
        return self._left == 0 and self._raw.read(1) == b""


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, what: str, label: str, budget: int) -> np.ndarray:
    try:
        with archive.open(info) as raw:
            stream = _BoundedReader(raw, info.file_size, what, label)
            shape, fortran_order, dtype = _header(stream, what, label)
            header_bytes = stream.consumed
            count = math.prod(shape)
            data_bytes = count * dtype.itemsize
            if data_bytes > budget:
                raise NpzRefused(
                    label,
                    f"array {what!r} is {dtype} {list(shape)}: {_size(data_bytes)} of data, over the {_size(budget)} "
                    f"left of what an NPZ file may inflate to ({CAP_SETTING})",
                )
            if header_bytes + data_bytes != info.file_size:
                # allocate nothing on a header's word: it must agree with the size the zip entry declares
                raise NpzUnreadable(
                    label,
                    f"array {what!r} is {dtype} {list(shape)} ({data_bytes} bytes) but its zip entry holds "
                    f"{info.file_size - header_bytes}",
                )
            flat = np.empty(count, dtype=dtype)
            _fill(stream, flat, what, label)
            if not stream.at_end():
                raise NpzUnreadable(label, f"array {what!r} holds more bytes than its header declares")
    except NpzRefused:
        raise
    # zipfile raises NotImplementedError for a compression method it lacks and RuntimeError for an
    # encrypted entry; both are a file we cannot read, not a bug of ours
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise NpzUnreadable(label, f"array {what!r} cannot be read ({exc})") from None
    if fortran_order:
        return flat.reshape(shape[::-1]).transpose()
    return flat.reshape(shape)


def _header(stream: _BoundedReader, what: str, label: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = npy_format.read_magic(stream)  # type: ignore[arg-type]
    if version == (1, 0):
        shape, fortran_order, dtype = npy_format.read_array_header_1_0(stream, _MAX_HEADER_BYTES)  # type: ignore[arg-type]
    elif version == (2, 0):
        shape, fortran_order, dtype = npy_format.read_array_header_2_0(stream, _MAX_HEADER_BYTES)  # type: ignore[arg-type]
    else:
        raise NpzUnreadable(label, f"array {what!r} is in .npy format version {version}, not 1.0 or 2.0")
    if dtype.hasobject:
        raise NpzUnreadable(
            label, f"array {what!r} holds Python objects; object arrays are refused (loading one would unpickle it)"
        )
    return tuple(int(d) for d in shape), bool(fortran_order), dtype


def _fill(stream: _BoundedReader, flat: np.ndarray, what: str, label: str) -> None:
    if flat.nbytes == 0:
        return
    view = memoryview(flat.view(np.uint8))  # type: ignore[arg-type]
    filled = 0
    while filled < len(view):
        count = stream.readinto(view[filled : filled + _READ_CHUNK])
        if not count:
            raise NpzUnreadable(label, f"array {what!r} ends after {filled} of its {len(view)} bytes")
        filled += count
