"""The names everything is keyed by, and how they travel in NATS subjects.

A model's name is 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit: the
trainer, the registry, the gateway, the monitor and the deployer all check this one rule. A '.'
separates subject tokens in NATS, so a name goes into a subject (and a JetStream consumer name) as one
token with each '.' written '~', a character no name holds: `iris.v2` is `infer.iris~v2`.
"""

from __future__ import annotations

import re

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
MODEL_NAME_RULE = "1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)

# the tensors of a model the trainer exports (a text model's input is `text`): torch-free, for readers of models
INPUT_NAME = "features"
OUTPUT_NAME = "logits"
TEXT_INPUT = "text"  # a text model's one input: tensor(string) [N], one text per row
# the locale a text model's StringNormalizer lower-cases in: ONNX Runtime's default (en_US.UTF-8) is not
# installed everywhere; C.UTF-8 is, and lower-cases Unicode
TEXT_LOCALE = "C.UTF-8"

INFER_PREFIX = "infer."
JOBS_PREFIX = "infer.jobs."
JOB_STATUS_PREFIX = "infer.jobs.status."
SAMPLE_PREFIX = "inference.sample."


def is_model_name(name: str) -> bool:
    return bool(_MODEL_NAME.fullmatch(name))


def subject_token(name: str) -> str:
    """`name` as one NATS subject token (also a valid JetStream consumer name): '.' becomes '~'."""
    return name.replace(".", "~")


def name_of_token(token: str) -> str:
    """The name `subject_token` made `token` from."""
    return token.replace("~", ".")


def infer_subject(model: str) -> str:
    """Where a model's replicas answer OIP infer requests over NATS (request/reply)."""
    return INFER_PREFIX + subject_token(model)


def jobs_subject(model: str) -> str:
    """Where batch jobs for a model are submitted (the INFER_JOBS stream)."""
    return JOBS_PREFIX + subject_token(model)


def sample_subject(model: str) -> str:
    """Where the gateway publishes a model's traffic samples for the monitor."""
    return SAMPLE_PREFIX + subject_token(model)
