"""Jobs on several machines: launch plans for the DeepSpeed launcher (ssh or one launcher per node) and
Kubernetes Indexed Jobs with one pod per node. `python -m gallery_trainer.multinode` prints them."""

from gallery_trainer.multinode.kubernetes import indexed_job, job_name
from gallery_trainer.multinode.plan import (
    DEFAULT_MASTER_PORT,
    HOSTFILE,
    LaunchPlan,
    NodePlan,
    PlanError,
    RankPlace,
    launch_plan,
)

__all__ = [
    "DEFAULT_MASTER_PORT",
    "HOSTFILE",
    "LaunchPlan",
    "NodePlan",
    "PlanError",
    "RankPlace",
    "indexed_job",
    "job_name",
    "launch_plan",
]
