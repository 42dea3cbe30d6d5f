"""How a training job ends when it produces no model (re-exported by `gallery_trainer.pipeline`)."""


class TrainingFailed(Exception):
    """The job cannot produce a model; the message is the reason a user reads."""


class JobCancelled(Exception):
    """The job was cancelled through its `cancel` event; its ranks were stopped."""
