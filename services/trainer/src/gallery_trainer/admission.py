"""What a trainer admits: the operator's limits on a job spec, checked when a spec is submitted.

The job spec's schema (`gallery_trainer.spec`) holds fixed, generous ceilings that are the same on
every machine, so a rank or a node that re-reads an admitted spec always accepts it. A `SpecPolicy`
adds what depends on where the trainer runs and what its operator allows: the folders it may read
(data roots), the hosts it may start ranks on, and lower size limits. `parse_spec(..., policy=...)`
applies it and names each offending field.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gallery_trainer.spec import JobSpec

# Fixed ceilings of the schema: a setting may raise a limit up to these, never past them.
CEILING_SPEC_BYTES = 1024 * 1024
CEILING_LAYER_WIDTH = 65_536
CEILING_BATCH_SIZE = 1 << 20
CEILING_RANKS = 1024
CEILING_SEARCH_BUDGET = 10_000

# Defaults of the settings: far above what the examples and the tests use, far below what exhausts a machine.
DEFAULT_SPEC_BYTES = 256 * 1024
DEFAULT_LAYER_WIDTH = 8192  # one 8192 x 8192 layer is 256 MiB of FP32 weights
DEFAULT_BATCH_SIZE = 65_536
DEFAULT_RANKS = 256  # all machines together
DEFAULT_LOCAL_RANKS = 16  # processes on the trainer's own machine: an 8-GPU server, with room to spare
DEFAULT_SEARCH_BUDGET = 500
DEFAULT_NODE_HOSTS = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class SpecPolicy:
    """The operator's rules for specs this trainer accepts (see `TrainerSettings.spec_policy`)."""

    data_roots: tuple[Path, ...]
    node_hosts: tuple[str, ...] = DEFAULT_NODE_HOSTS
    max_spec_bytes: int = DEFAULT_SPEC_BYTES
    max_layer_width: int = DEFAULT_LAYER_WIDTH
    max_batch_size: int = DEFAULT_BATCH_SIZE
    max_ranks: int = DEFAULT_RANKS
    max_local_ranks: int = DEFAULT_LOCAL_RANKS
    max_search_budget: int = DEFAULT_SEARCH_BUDGET

    def roots_text(self) -> str:
        return ", ".join(str(root) for root in self.data_roots) or "none configured"

    def allows_host(self, host: str) -> bool:
        return any(fnmatch.fnmatchcase(host.lower(), pattern.lower()) for pattern in self.node_hosts)


def resolve_inside(path: str | Path, roots: Iterable[Path]) -> Path | None:
    """`path` with every symlink and `..` resolved, when that lies inside one of `roots`; else None.

    Only absolute paths qualify: a relative one would depend on the process's working folder.
    """
    candidate = Path(path)
    if not candidate.is_absolute():
        return None
    try:
        real = candidate.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return None
    for root in roots:
        try:
            real_root = root.resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        if real.is_relative_to(real_root):
            return real
    return None


def spec_size(source: str | bytes | Mapping[str, Any]) -> int:
    """The size of a spec in bytes: its text, or a mapping written as compact JSON."""
    if isinstance(source, bytes):
        return len(source)
    if isinstance(source, str):
        return len(source.encode("utf-8", errors="replace"))
    return len(json.dumps(source, separators=(",", ":"), default=str).encode("utf-8"))


def policy_problems(spec: JobSpec, policy: SpecPolicy) -> list[str]:
    """Every way `spec` breaks `policy`, as `field: reason` lines; the search space's extremes included."""
    problems = _limits(spec, policy)
    if spec.search is not None:
        problems += _search_problems(spec, policy, set(problems))
    return problems


def _limits(spec: JobSpec, policy: SpecPolicy) -> list[str]:
    problems = []
    data, engine, model = spec.data, spec.engine, spec.model
    if data.path is not None and resolve_inside(data.path, policy.data_roots) is None:
        problems.append(
            f"data.path: {data.path!r} is not an absolute path inside the data roots this trainer may read "
            f"({policy.roots_text()}; symlinks and '..' are followed first); put the folder there, or upload it "
            "and give data.uri"
        )
    # a relative hostfile is read from the job's work folder, which the schema already keeps it inside
    hostfile = engine.hostfile
    if hostfile and PurePosixPath(hostfile).is_absolute() and resolve_inside(hostfile, policy.data_roots) is None:
        problems.append(
            f"engine.hostfile: {hostfile!r} is neither in the job's work folder (a relative path) nor "
            f"inside a data root ({policy.roots_text()})"
        )
    for index, node in enumerate(engine.nodes or []):
        if not policy.allows_host(node.host):
            problems.append(
                f"engine.nodes.{index}.host: {node.host!r} is not a host this trainer may start ranks on "
                f"(allowed: {', '.join(policy.node_hosts) or 'none'}; the operator sets GALLERY_NODE_HOSTS)"
            )
    if engine.ranks > policy.max_ranks:
        problems.append(f"engine.ranks: {engine.ranks} is more than the {policy.max_ranks} ranks a job may have")
    elif not engine.multi_node and engine.ranks > policy.max_local_ranks:
        problems.append(
            f"engine.ranks: {engine.ranks} ranks on the trainer's own machine is more than its limit of "
            f"{policy.max_local_ranks}; give engine.nodes to use several machines"
        )
    widths = [("model.hidden", model.hidden)]
    if model.architecture == "cnn":
        widths.append(("model.channels", model.channels))
    for field, sizes in widths:
        for index, size in enumerate(sizes):
            if size > policy.max_layer_width:
                problems.append(f"{field}.{index}: {size} is wider than the limit of {policy.max_layer_width}")
    if spec.training.batch_size > policy.max_batch_size:
        problems.append(
            f"training.batch_size: {spec.training.batch_size} is more than the limit of {policy.max_batch_size}"
        )
    if spec.search is not None and spec.search.budget > policy.max_search_budget:
        problems.append(
            f"search.budget: {spec.search.budget} trials is more than the limit of {policy.max_search_budget}"
        )
    return problems


def _search_problems(spec: JobSpec, policy: SpecPolicy, known: set[str]) -> list[str]:
    """Each dimension's extremes (a range's bounds, every choice) set into the spec, against the policy.

    Every limit is an upper bound or a place, so the extremes stand for every value a trial can draw.
    A value the schema refuses is left to the trial (it fails with its own reason). Problems the base
    spec has already (`known`) are not repeated for every dimension.
    """
    from gallery_trainer.spec import SpecError

    assert spec.search is not None
    problems: list[str] = []
    for path, dimension in spec.search.space.items():
        values: Sequence[Any]
        if dimension.type == "categorical":
            values = dimension.choices or []
        elif dimension.type == "int":
            values = [int(dimension.low or 0), int(dimension.high or 0)]
        else:
            values = [dimension.low, dimension.high]
        for value in values:
            try:
                trial = spec.search.apply(spec, {path: value})
            except SpecError:
                continue
            for problem in _limits(trial, policy):
                if problem not in known:
                    problems.append(f"search.space.{path}: the value {value!r} gives {problem}")
    return problems


def parse_path_list(value: object) -> object:
    """`a:b` or `a,b` (an environment variable) as a list of paths; other values pass through."""
    if not isinstance(value, str):
        return value
    return [part.strip() for part in value.replace(",", os.pathsep).split(os.pathsep) if part.strip()]


def parse_name_list(value: object) -> object:
    """`a,b` (an environment variable) as a list of names; other values pass through."""
    if not isinstance(value, str):
        return value
    return [part.strip() for part in value.split(",") if part.strip()]
