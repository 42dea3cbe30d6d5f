"""The training job spec: what to train on, how to prepare it, which model, how to train, on which engine.

A spec is YAML or JSON text (or a mapping). `parse_spec` validates all of it at once and raises
`SpecError` listing every bad field as `dotted.path: reason`, so a user fixes a spec in one pass.
The schema's size ceilings are fixed and generous; a trainer admits specs under its operator's
`SpecPolicy` as well (`gallery_trainer.admission`): data roots, node hosts and lower limits.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from gallery_common.events import NAME_PATTERN
from gallery_common.projects import PROJECT_PATTERN
from gallery_trainer.admission import (
    CEILING_BATCH_SIZE,
    CEILING_LAYER_WIDTH,
    CEILING_RANKS,
    CEILING_SEARCH_BUDGET,
    CEILING_SPEC_BYTES,
    SpecPolicy,
    policy_problems,
    spec_size,
)
from gallery_trainer.spec_text import SpecTextError, load_spec_text

BUILTIN_DATASETS = ("digits", "iris", "wine", "breast_cancer", "wordnet_topics")
# built-in data sets of texts (the others are tables of numbers)
BUILTIN_TEXT_DATASETS = ("wordnet_topics",)
TEXT_SOURCES = ("text_csv", "text_folder")
MAX_VOCABULARY = 50_000  # every word is a column of the first layer, and ~80 pool strings of the vectorizer
MAX_TEXT_COPIES = 16
ACTIVATIONS = ("relu", "gelu", "tanh", "silu", "leaky_relu")
# a host name or IPv4 address: no spaces (hostfile lines), commas (pdsh host lists) or user@ prefixes
HOST_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,252})$"
# Fixed ceilings beside those in `admission`: beyond them a job exhausts any machine it runs on.
MAX_LAYERS = 64
MAX_CONV_BLOCKS = 16
MAX_IMAGE_SIDE = 1024  # every picture becomes channels x height x width FP32 values in memory
MAX_NODES = CEILING_RANKS
MAX_SEARCH_DIMENSIONS = 32
MAX_CHOICES = 256
MAX_ROUNDS = 10_000
MAX_SITES = 1_000
ADDRESS_PATTERN = r"^[A-Za-z0-9.:\[\]_-]+:[0-9]{1,5}$"
FEDERATED_FIELDS = (
    "rounds",
    "strategy",
    "min_sites",
    "fraction_fit",
    "local_epochs",
    "proximal_mu",
    "round_timeout_s",
    "address",
    "differential_privacy",
    "secure_aggregation",
)
RANK_FIELDS = (
    "ranks",
    "pipeline_stages",
    "zero_stage",
    "hostfile",
    "nodes",
    "launcher",
    "backend",
    "checkpoint_epochs",
)


def _without(dumped: dict[str, Any], *names: str) -> dict[str, Any]:
    return {key: value for key, value in dumped.items() if key not in names}


class SpecError(ValueError):
    """A job spec that cannot run; `problems` has one `field: reason` line per bad field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid job spec: " + "; ".join(problems))
        self.problems = problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Section):
    """Where the examples come from.

    `builtin` names a scikit-learn data set shipped inside the package (or `wordnet_topics`, texts built
    from the WordNet files a dependency ships); `csv` and `npz` read an artifact (`uri` + `sha256`)
    through the artifact store; `images` reads a folder with one subfolder per class (`path` on local
    disk, or `uri`: a folder prefix in the artifact store). Texts: `text_csv` reads a CSV artifact of
    (`text_column`, `target`) rows; `text_folder` a folder (`path` or `uri`) with one subfolder per
    class holding UTF-8 `.txt` files, one text per file.
    """

    source: Literal["builtin", "csv", "npz", "images", "text_csv", "text_folder"]
    name: Literal["digits", "iris", "wine", "breast_cancer", "wordnet_topics"] | None = None
    uri: str | None = Field(default=None, pattern=r"^(file|s3)://")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    path: str | None = None
    target: str | None = Field(
        default=None,
        description="CSV: the target column (default: the last); text_csv: the label column (default: label); "
        "NPZ: the label array (default: y)",
    )
    text_column: str = Field(default="text", min_length=1, description="text_csv: the column holding the texts")
    features: str = Field(default="x", description="NPZ: the feature array")
    task: Literal["classification", "regression"] = "classification"
    image_shape: tuple[int, int, int] | None = Field(
        default=None, description="[channels, height, width] of flat features that are images (digits: 1, 8, 8)"
    )
    image_size: tuple[Annotated[int, Field(le=MAX_IMAGE_SIDE)], Annotated[int, Field(le=MAX_IMAGE_SIDE)]] = Field(
        default=(32, 32), description="images: every picture is resized to [h, w]"
    )
    grayscale: bool = Field(default=False, description="images: one channel instead of RGB")

    @model_validator(mode="after")
    def _source_fields(self) -> DataSpec:
        problems: list[str] = []
        if self.source == "builtin":
            if self.name is None:
                problems.append(f"name: required for a builtin data set (one of {', '.join(BUILTIN_DATASETS)})")
            if self.task == "regression":
                problems.append("task: the builtin data sets are classification data sets")
        elif self.source in ("csv", "npz"):
            if self.uri is None:
                problems.append(f"uri: required for a {self.source} data set (an artifact store URI)")
            if self.sha256 is None:
                problems.append(f"sha256: required for a {self.source} data set")
        elif self.source == "text_csv":
            if self.uri is None:
                problems.append("uri: required for a text_csv data set (an artifact store URI)")
            if self.sha256 is None:
                problems.append("sha256: required for a text_csv data set")
        elif self.source in ("images", "text_folder") and (self.uri is None) == (self.path is None):
            problems.append("path: give exactly one of path (a local folder) or uri (an artifact store folder)")
        if self.source in TEXT_SOURCES and self.task == "regression":
            problems.append("task: text data sets are classification data sets")
        if self.is_text and self.image_shape is not None:
            problems.append("image_shape: texts have no image shape")
        if self.image_shape is not None and min(self.image_shape) < 1:
            problems.append("image_shape: every dimension must be at least 1")
        if min(self.image_size) < 1:
            problems.append("image_size: height and width must be at least 1")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def is_text(self) -> bool:
        """Whether the examples are raw texts (one per row), not rows of numbers or pictures."""
        return self.source in TEXT_SOURCES or self.name in BUILTIN_TEXT_DATASETS

    @model_serializer(mode="wrap")
    def _own_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without `text_column` unless the data are texts: other specs' config hashes stay what they were
        before text jobs existed."""
        dumped: dict[str, Any] = handler(self)
        return dumped if self.is_text else _without(dumped, "text_column")


class SplitSpec(_Section):
    """Fractions of the examples for each split (they add up to 1), drawn with `seed`."""

    train: float = Field(default=0.7, gt=0, lt=1)
    validation: float = Field(default=0.15, gt=0, lt=1)
    test: float = Field(default=0.15, gt=0, lt=1)
    seed: int = 0
    stratify: bool = Field(default=True, description="keep class proportions in every split (classification)")

    @model_validator(mode="after")
    def _adds_up(self) -> SplitSpec:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1, not {total:g}")
        return self


class PCASpec(_Section):
    """Project onto `components` principal axes, or onto as many as keep `variance` of the variance."""

    components: int | None = Field(default=None, ge=1)
    variance: float | None = Field(default=None, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_of(self) -> PCASpec:
        if (self.components is None) == (self.variance is None):
            raise ValueError("give exactly one of components or variance")
        return self


class ImageAugmentation(_Section):
    """Random resized crop, horizontal flip and colour jitter, applied to training batches only."""

    crop_scale: tuple[float, float] | None = Field(default=None, description="area fraction range, e.g. [0.8, 1]")
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = Field(default=0.0, ge=0, le=1, description="probability of a horizontal flip")
    brightness: float = Field(default=0.0, ge=0, lt=1)
    contrast: float = Field(default=0.0, ge=0, lt=1)
    saturation: float = Field(default=0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _ranges(self) -> ImageAugmentation:
        problems = []
        if self.crop_scale is not None and not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            problems.append("crop_scale: needs 0 < low <= high <= 1")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            problems.append("crop_ratio: needs 0 < low <= high")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TabularAugmentation(_Section):
    """Gaussian noise (in units of each feature's training standard deviation) and mixup."""

    noise: float = Field(default=0.0, ge=0, description="noise standard deviation, in feature standard deviations")
    mixup: float = Field(default=0.0, ge=0, description="mixup Beta(alpha, alpha); 0 turns it off")


class TextAugmentation(_Section):
    """Easy data augmentation for texts (Wei & Zou, 2019), applied to the training split only: each training
    text gains `copies` altered copies, each made by one of the operations asked for, in turn.

    `synonyms` replaces that share of a text's words with a WordNet synonym; `insert` inserts synonyms of
    random words at random places; `swap` swaps that share of word pairs; `delete` drops each word with
    that probability. An operation that would empty a text leaves it as it was; copies equal to their
    original are not added.
    """

    copies: int = Field(default=1, ge=1, le=MAX_TEXT_COPIES, description="altered copies per training text")
    synonyms: float = Field(default=0.0, ge=0, le=1, description="share of words replaced by a WordNet synonym")
    insert: float = Field(default=0.0, ge=0, le=1, description="share of the length inserted as synonyms")
    swap: float = Field(default=0.0, ge=0, le=1, description="share of the length swapped in random pairs")
    delete: float = Field(default=0.0, ge=0, lt=1, description="probability of dropping each word")

    @model_validator(mode="after")
    def _some_operation(self) -> TextAugmentation:
        if not (self.synonyms or self.insert or self.swap or self.delete):
            raise ValueError("synonyms: give at least one of synonyms, insert, swap or delete above 0")
        return self


class AugmentationSpec(_Section):
    image: ImageAugmentation | None = None
    tabular: TabularAugmentation | None = None
    text: TextAugmentation | None = None

    @model_serializer(mode="wrap")
    def _own_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without `text` when it is not given, so config hashes from before text jobs stay valid."""
        dumped: dict[str, Any] = handler(self)
        return dumped if self.text is not None else _without(dumped, "text")


class TextPreparation(_Section):
    """The bag-of-words vectorizer fitted on the training texts: the `max_words` words found in the most
    training texts (each in at least `min_documents`), weighted by idf when `idf`, each row L2-normalised."""

    max_words: int = Field(default=5000, ge=1, le=MAX_VOCABULARY)
    min_documents: int = Field(default=2, ge=1)
    idf: bool = True


class PreparationSpec(_Section):
    """Split, leakage check and feature engineering; every fitted step sees the training split only.

    Feature steps run in this order: standardisation, univariate selection, PCA. Texts are vectorized by
    `text` instead (L2-normalised word weights, which standardisation would only blur).
    """

    split: SplitSpec = Field(default_factory=SplitSpec)
    leakage: Literal["drop", "fail", "report"] = Field(
        default="drop", description="rows found in two splits: drop them from the later split, fail, or only report"
    )
    standardize: bool = True
    select_k_best: int | None = Field(default=None, ge=1, description="keep the k features with the best F score")
    pca: PCASpec | None = None
    text: TextPreparation | None = Field(default=None, description="texts: the vectorizer (default: its defaults)")
    augmentation: AugmentationSpec = Field(default_factory=AugmentationSpec)

    @model_serializer(mode="wrap")
    def _own_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without `text` when it is not given, so config hashes from before text jobs stay valid."""
        dumped: dict[str, Any] = handler(self)
        return dumped if self.text is not None else _without(dumped, "text")

    @property
    def vectorizer(self) -> TextPreparation:
        """The text vectorizer's settings: `text`, or the defaults."""
        return self.text or TextPreparation()


class ModelSpec(_Section):
    """An architecture described as data: an MLP, or a small CNN over image-shaped features."""

    architecture: Literal["mlp", "cnn"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1, le=CEILING_LAYER_WIDTH)]] = Field(
        default_factory=lambda: [128], max_length=MAX_LAYERS, description="dense layer sizes"
    )
    activation: Literal["relu", "gelu", "tanh", "silu", "leaky_relu"] = "relu"
    dropout: float = Field(default=0.0, ge=0, lt=1)
    channels: list[Annotated[int, Field(ge=1, le=CEILING_LAYER_WIDTH)]] = Field(
        default_factory=lambda: [16, 32],
        max_length=MAX_CONV_BLOCKS,
        description="cnn: output channels of each conv block",
    )
    kernel_size: int = Field(default=3, ge=1, le=11)

    @property
    def weighted_layers(self) -> int:
        """How many layers carry weights: the most pipeline stages the model can be cut into."""
        return len(self.hidden) + 1 + (len(self.channels) if self.architecture == "cnn" else 0)

    @model_validator(mode="after")
    def _kernel(self) -> ModelSpec:
        if self.architecture == "cnn" and self.kernel_size % 2 == 0:
            raise ValueError("kernel_size: must be odd so a convolution keeps the image size")
        if self.architecture == "cnn" and not self.channels:
            raise ValueError("channels: a cnn needs at least one conv block")
        return self


class ScheduleSpec(_Section):
    """Learning-rate schedule per optimizer step; `warmup_steps` ramps linearly up first (any kind)."""

    kind: Literal["constant", "step", "cosine"] = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    step_epochs: int = Field(default=10, ge=1, description="step: multiply by gamma every this many epochs")
    gamma: float = Field(default=0.1, gt=0, le=1)
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1, description="cosine: the floor, as a fraction of the rate")


class EarlyStoppingSpec(_Section):
    """Stop when the validation loss has not improved by `min_delta` for `patience` epochs; keep the best."""

    patience: int = Field(default=5, ge=1)
    min_delta: float = Field(default=0.0, ge=0)


class TrainingSpec(_Section):
    """The optimisation. `batch_size` is the micro-batch of one data-parallel rank; an optimizer step sees
    `batch_size * gradient_accumulation * data-parallel ranks` examples."""

    epochs: int = Field(default=10, gt=0, le=100_000)
    batch_size: int = Field(default=32, gt=0, le=CEILING_BATCH_SIZE)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = Field(default=1e-3, gt=0, le=10)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1, description="sgd only")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    gradient_accumulation: int = Field(default=1, ge=1, le=65_536)
    gradient_clipping: float | None = Field(default=None, gt=0, description="max global gradient norm")
    precision: Literal["fp32", "bf16"] = "fp32"
    early_stopping: EarlyStoppingSpec | None = None
    seed: int = 0


class NodeSpec(_Section):
    """One machine of a multi-node job: its host name (or address) and how many ranks it runs."""

    host: str = Field(description="a host name or IPv4 address every node can reach")
    slots: int = Field(ge=1, le=1024, description="ranks on this machine (its GPUs, or CPU ranks)")

    @field_validator("host")
    @classmethod
    def _host(cls, host: str) -> str:
        if not re.fullmatch(HOST_PATTERN, host):
            raise ValueError(f"{host!r} is not a host name or IPv4 address (letters, digits, '.', '-', '_')")
        return host


class DifferentialPrivacySpec(_Section):
    """Site-level differential privacy for a federated job (Flower's server-side fixed clipping): each
    site's update clipped to `clipping_norm`, Gaussian noise of `noise_multiplier * clipping_norm /
    min_sites` on their average; the run reports the budget epsilon at `delta`."""

    noise_multiplier: float = Field(gt=0, le=1_000)
    clipping_norm: float = Field(default=1.0, gt=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)


class SecureAggregationSpec(_Section):
    """Flower's SecAgg+ for a federated job: each site masks its weights so that the coordinator learns only
    their weighted sum. As in Flower, `num_shares` is the share of the sampled sites each site splits its
    secrets among and `reconstruction_threshold` the share of those needed to unmask a site that dropped."""

    num_shares: float = Field(default=1.0, gt=0, le=1)
    reconstruction_threshold: float = Field(default=0.67, gt=0, le=1)
    clipping_range: float = Field(default=8.0, gt=0, description="weights are clipped to +-this before masking")


class EngineSpec(_Section):
    """Where and how the ranks run: `ranks` = data-parallel ranks x `pipeline_stages`.

    Several machines are named either by `nodes` (the plan writes the hostfile) or by `hostfile` (a
    DeepSpeed hostfile on the launching machine). `launcher` says how the nodes start: `ssh` (the
    DeepSpeed runner reaches every node over passwordless SSH) or `per_node` (each node starts its
    own launcher, by hand or as a Kubernetes Indexed Job).

    `kind: federated` trains on sites that hold their own data (`gallery site run`): the trainer
    coordinates `rounds` rounds over Flower at `address`; each round `fraction_fit` of the connected
    sites (at least `min_sites`) train `local_epochs` epochs from the global weights and the strategy
    (`fedavg`, or `fedprox` with `proximal_mu`) aggregates them. A round that cannot gather `min_sites`
    within `round_timeout_s` ends the job.
    """

    kind: Literal["deepspeed", "ddp", "federated"] = "deepspeed"
    ranks: int = Field(default=1, ge=1, le=CEILING_RANKS)
    pipeline_stages: int = Field(default=1, ge=1, le=CEILING_RANKS)
    zero_stage: Literal[0, 1, 2, 3] = 0
    hostfile: str | None = Field(
        default=None,
        description="deepspeed: a hostfile for several machines: relative, in the job's work folder; or absolute, "
        "inside a data root",
    )
    nodes: list[NodeSpec] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NODES,
        description="deepspeed: the machines, in node-rank order (instead of hostfile)",
    )
    launcher: Literal["ssh", "per_node"] = Field(
        default="ssh", description="several machines: the runner reaches them over ssh, or each starts its own"
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(default="auto", description="auto: nccl with CUDA, else gloo")
    checkpoint_epochs: int = Field(default=1, ge=0, description="save a resumable checkpoint every N epochs; 0: never")
    rounds: int = Field(default=10, ge=1, le=MAX_ROUNDS, description="federated: rounds of local training")
    strategy: Literal["fedavg", "fedprox"] = Field(default="fedavg", description="federated: how updates combine")
    min_sites: int = Field(default=2, ge=1, le=MAX_SITES, description="federated: fewer sites in a round end the job")
    fraction_fit: float = Field(default=1.0, gt=0, le=1, description="federated: share of the sites each round trains")
    local_epochs: int = Field(default=1, ge=1, le=1_000, description="federated: epochs a site trains per round")
    proximal_mu: float = Field(default=0.0, ge=0, description="fedprox: weight of the proximal term")
    round_timeout_s: float = Field(
        default=300.0, gt=0, le=86_400, description="federated: seconds to gather min_sites and for a site's answer"
    )
    address: str = Field(
        default="0.0.0.0:9092", pattern=ADDRESS_PATTERN, description="federated: host:port the coordinator listens on"
    )
    differential_privacy: DifferentialPrivacySpec | None = Field(
        default=None, description="federated: clip each site's update and add Gaussian noise; report epsilon"
    )
    secure_aggregation: SecureAggregationSpec | None = Field(
        default=None, description="federated: sites mask their weights (SecAgg+); the coordinator sees only the sum"
    )

    @model_validator(mode="after")
    def _layout(self) -> EngineSpec:
        problems = self._federated_problems()
        if self.ranks % self.pipeline_stages:
            problems.append(f"ranks: {self.ranks} ranks cannot be split into {self.pipeline_stages} pipeline stages")
        if self.kind == "ddp":
            if self.pipeline_stages > 1:
                problems.append("pipeline_stages: pipeline parallelism needs kind deepspeed")
            if self.zero_stage:
                problems.append("zero_stage: ZeRO needs kind deepspeed")
            if self.hostfile:
                problems.append("hostfile: several machines need kind deepspeed")
            if self.nodes:
                problems.append("nodes: several machines need kind deepspeed")
        elif self.pipeline_stages > 1 and self.zero_stage > 1:
            problems.append("zero_stage: DeepSpeed pipeline parallelism works with ZeRO stage 0 or 1 only")
        if self.hostfile is not None:
            problems += _hostfile_problems(self.hostfile)
        problems += self._node_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_serializer(mode="wrap")
    def _own_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A federated engine without the rank fields, any other without the federated ones: a spec's
        config hash and parameters stay what they were before federated training existed."""
        dumped: dict[str, Any] = handler(self)
        left_out = RANK_FIELDS if self.kind == "federated" else FEDERATED_FIELDS
        return {k: v for k, v in dumped.items() if k not in left_out}

    def _federated_problems(self) -> list[str]:
        given = self.model_fields_set
        if self.kind != "federated":
            return [f"{name}: only for kind federated" for name in FEDERATED_FIELDS if name in given]
        problems = [
            f"{name}: a federated job runs on its sites, not on {name}" for name in RANK_FIELDS if name in given
        ]
        if self.strategy == "fedprox" and not self.proximal_mu:
            problems.append("proximal_mu: fedprox needs a proximal_mu above 0")
        if self.secure_aggregation is not None and self.differential_privacy is not None:
            problems.append(
                "secure_aggregation: not with differential_privacy (its server-side clipping needs each site's update)"
            )
        if self.strategy == "fedavg" and self.proximal_mu:
            problems.append("proximal_mu: only for strategy fedprox")
        return problems

    def _node_problems(self) -> list[str]:
        if self.nodes is None:
            if self.launcher == "per_node":
                return ["launcher: per_node needs engine.nodes, so each node's rank and command are known"]
            return []
        problems = []
        if self.hostfile:
            problems.append("nodes: give either nodes or hostfile, not both")
        hosts = [node.host for node in self.nodes]
        repeated = sorted({host for host in hosts if hosts.count(host) > 1})
        if repeated:
            problems.append(f"nodes: each host may appear once, and {', '.join(repeated)} appears more than once")
        slots = sum(node.slots for node in self.nodes)
        if slots != self.ranks:
            problems.append(f"ranks: must equal the nodes' slots in all ({slots}), not {self.ranks}")
        return problems

    @property
    def multi_node(self) -> bool:
        """Whether the ranks run through a hostfile (several machines), not on the launching machine."""
        return bool(self.hostfile or self.nodes)

    @property
    def data_parallel(self) -> int:
        return self.ranks // self.pipeline_stages


def _hostfile_problems(hostfile: str) -> list[str]:
    """Rules every machine can check: the launcher reads a relative hostfile from the job's work folder."""
    if not hostfile:
        return ["hostfile: must not be empty (leave it out for one machine)"]
    if any(ord(char) < 32 for char in hostfile):
        return ["hostfile: must be a path without control characters"]
    if not PurePosixPath(hostfile).is_absolute() and ".." in PurePosixPath(hostfile).parts:
        return [f"hostfile: {hostfile!r} leaves the job's work folder ('..'); a relative hostfile is read from there"]
    return []


class SearchDimension(_Section):
    """One hyperparameter to search: a float or int range (`log` for a log scale) or a list of choices."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = Field(default=None, max_length=MAX_CHOICES)

    @model_validator(mode="after")
    def _bounds(self) -> SearchDimension:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("choices: a categorical dimension needs at least one choice")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"low, high: a {self.type} dimension needs both bounds")
        if self.low > self.high:
            raise ValueError("low: must not exceed high")
        if self.log and self.low <= 0:
            raise ValueError("low: a log scale needs a positive lower bound")
        return self


class SearchSpec(_Section):
    """A hyperparameter search: `budget` trials, each the base spec with `space`'s paths set to sampled values."""

    budget: int = Field(ge=1, le=CEILING_SEARCH_BUDGET)
    metric: str = "val_accuracy"
    direction: Literal["maximize", "minimize"] = "maximize"
    space: dict[str, SearchDimension] = Field(min_length=1, max_length=MAX_SEARCH_DIMENSIONS)

    def apply(self, spec: JobSpec, params: Mapping[str, Any]) -> JobSpec:
        """`spec` with each dotted path in `params` (e.g. `training.learning_rate`) set; SpecError if invalid."""
        doc = spec.model_dump(mode="json")
        for path, value in params.items():
            node = doc
            *parents, leaf = path.split(".")
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise SpecError([f"search.space.{path}: no such field in the job spec"])
                node = node[part]
            node[leaf] = value
        doc.pop("search", None)
        return parse_spec(doc)


class JobSpec(_Section):
    """A whole training job; `name` becomes the model's name in the registry.

    `project`: where the job, its run and the model it registers belong; a spec that names none is
    given the submitter's home project when it is submitted (the stored spec always names one).
    """

    name: str = Field(pattern=NAME_PATTERN)
    project: str | None = Field(default=None, pattern=PROJECT_PATTERN)
    data: DataSpec
    preparation: PreparationSpec = Field(default_factory=PreparationSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    engine: EngineSpec = Field(default_factory=EngineSpec)
    search: SearchSpec | None = None


def _cross_field_problems(spec: JobSpec) -> list[str]:
    """Rules that span sections (each section has checked itself already)."""
    problems = []
    prep, data = spec.preparation, spec.data
    image_shaped = data.source == "images" or data.image_shape is not None or data.name == "digits"
    if spec.model.architecture == "cnn" and not data.is_text:
        if not image_shaped:
            problems.append("model.architecture: a cnn needs image-shaped features; set data.image_shape")
        if prep.pca is not None or prep.select_k_best is not None:
            problems.append(
                "model.architecture: a cnn needs the image pixels; remove preparation.pca and select_k_best"
            )
    problems += _text_problems(spec)
    if prep.augmentation.image is not None and not image_shaped:
        problems.append("preparation.augmentation.image: needs image-shaped features; set data.image_shape")
    if data.task == "regression" and spec.search is not None and spec.search.metric == "val_accuracy":
        problems.append("search.metric: a regression job has no val_accuracy; use val_rmse or val_loss")
    if spec.engine.pipeline_stages > spec.model.weighted_layers:
        problems.append(
            f"engine.pipeline_stages: the model has {spec.model.weighted_layers} layers with weights, "
            f"so it cannot be cut into {spec.engine.pipeline_stages} stages"
        )
    if spec.engine.kind == "federated":
        problems += _federated_job_problems(spec)
    if spec.search is not None:
        for path in spec.search.space:
            if not _path_exists(spec, path):
                problems.append(f"search.space.{path}: no such field in the job spec")
    return problems


def _text_problems(spec: JobSpec) -> list[str]:
    """What a text job cannot combine with: steps written for rows of numbers or for pictures."""
    prep = spec.preparation
    if not spec.data.is_text:
        wanted = "a text data set (text_csv, text_folder, wordnet_topics)"
        problems = [f"preparation.text: needs {wanted}"] if prep.text is not None else []
        if prep.augmentation.text is not None:
            problems.append(f"preparation.augmentation.text: needs {wanted}")
        return problems
    problems = []
    if spec.model.architecture == "cnn":
        problems.append("model.architecture: a text model is an mlp over word features")
    if prep.pca is not None or prep.select_k_best is not None:
        problems.append("preparation: texts are vectorized by preparation.text; remove pca and select_k_best")
    if prep.augmentation.image is not None or prep.augmentation.tabular is not None:
        problems.append("preparation.augmentation: a text job augments with augmentation.text only")
    if spec.engine.kind == "federated":
        problems.append("engine.kind: federated training takes rows of numbers, not texts")
    return problems


def _federated_job_problems(spec: JobSpec) -> list[str]:
    """What a federated job cannot do yet: each is a step fitted on all rows, or a loop over one process."""
    problems = []
    if spec.data.task != "classification":
        problems.append("data.task: federated training trains classifiers")
    if spec.preparation.select_k_best is not None or spec.preparation.pca is not None:
        problems.append("preparation: a federated job standardises only (select_k_best and pca need every row)")
    if spec.training.early_stopping is not None:
        problems.append("training.early_stopping: a federated job runs its rounds; leave early_stopping out")
    if spec.training.schedule.kind != "constant" or spec.training.schedule.warmup_steps:
        problems.append("training.schedule: a federated site trains at the constant learning rate")
    if spec.training.precision != "fp32":
        problems.append("training.precision: a federated site trains in fp32")
    if spec.search is not None:
        problems.append("search: a federated job cannot run a hyperparameter search")
    return problems


def _path_exists(spec: JobSpec, path: str) -> bool:
    node: Any = spec.model_dump(mode="json")
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-after"))
    message = str(error["msg"]).removeprefix("Value error, ")
    # A model validator reports "field: reason; field: reason" for its own section: qualify each field.
    if error["type"] == "value_error" and ": " in message:
        return "; ".join(f"{location + '.' if location else ''}{part}" for part in message.split("; "))
    return f"{location or 'spec'}: {message}"


def parse_spec(source: str | bytes | Mapping[str, Any], *, policy: SpecPolicy | None = None) -> JobSpec:
    """Parse and validate a job spec from YAML or JSON text or a mapping; SpecError lists every bad field.

    With `policy` (a trainer admitting a spec) the operator's limits apply too. Without it only the
    schema does: a rank or a node re-reading an admitted spec has none of the trainer's settings.
    """
    if policy is not None and spec_size(source) > policy.max_spec_bytes:
        raise SpecError([f"spec: {spec_size(source)} bytes is more than the limit of {policy.max_spec_bytes} bytes"])
    if isinstance(source, bytes | str):
        try:
            doc = load_spec_text(source, CEILING_SPEC_BYTES)
        except SpecTextError as exc:
            raise SpecError([str(exc)]) from None
    else:
        doc = source
    if not isinstance(doc, Mapping):
        raise SpecError(["spec: must be a mapping of sections (name, data, preparation, model, training, engine)"])
    try:
        spec = JobSpec.model_validate(dict(doc))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            problems.extend(_describe(error).split("; ") if error["type"] == "value_error" else [_describe(error)])
        raise SpecError(problems) from None
    problems = _cross_field_problems(spec)
    if problems:
        raise SpecError(problems)
    if policy is not None:
        problems = policy_problems(spec, policy)
        if problems:
            raise SpecError(problems)
    return spec


def config_hash(spec: JobSpec) -> str:
    """The sha256 of the spec's canonical JSON (sorted keys, no whitespace); equal specs hash equal.

    The project is left out: it says who may see the job, not what is trained."""
    canonical = json.dumps(spec.model_dump(mode="json", exclude={"project"}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
