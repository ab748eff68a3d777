"""The `training` section of the settings: where and how `editloop trainer` runs training jobs."""

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from policies.training.config import TrainConfig


class TrainingSettings(BaseModel):
    """The trainer process: job folders, launcher, lease, data selection defaults, the gate."""

    # A misspelt key in a config file is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")

    work_dir: Path | None = Field(
        None,
        description="folder of job folders (DeepSpeed checkpoints live there: on a multi-trainer "
        "deployment a shared filesystem); empty = <data_dir>/training",
    )
    launcher: Literal["torchrun", "deepspeed", "none"] = Field(
        "torchrun", description="how ranks are started; none = one process, no launcher"
    )
    nproc_per_node: int = Field(1, gt=0, description="ranks per node (GPUs, or CPU processes)")
    nnodes: int = Field(
        1,
        gt=0,
        description="training nodes per job (torchrun): node 0's trainer claims jobs, the others "
        "follow it into each job; the work_dir must be shared by every node",
    )
    node_rank: int = Field(0, ge=0, description="this node's rank among the nnodes, 0 = the leader")
    rdzv_endpoint: str = Field(
        "",
        description="host:port of node 0 where the nodes' ranks meet (torchrun's master "
        "address and port); required when nnodes > 1",
    )
    lease_s: float = Field(
        60.0,
        gt=0,
        description="a job's lease; lapses this long after the trainer's last renewal, s",
    )
    renew_s: float = Field(10.0, gt=0, description="lease renewal interval, s")
    poll_s: float = Field(5.0, gt=0, description="how often an idle trainer looks for jobs, s")
    max_claims: int = Field(
        3,
        gt=0,
        description="claims of a job whose lease keeps lapsing (its trainer dies: OOM, a crash) "
        "before the next claimer marks it failed instead",
    )
    recipe: dict[str, Any] = Field(
        default_factory=dict,
        description="TrainConfig fields for every job (max_steps, zero_stage, mode, resolution, "
        "learning_rate, replay_manifest, ...); model, manifest and output_dir are set per job",
    )
    hindsight: bool = Field(True, description="train on hindsight examples of reflection chains")
    direct: bool = Field(True, description="train on direct examples (input + instruction used)")
    min_overall: float | None = Field(
        None, ge=1, le=5, description="only accepted edits with at least this overall score"
    )
    max_depth: int | None = Field(None, ge=0, description="only accepted edits this deep at most")
    unfiltered: bool = Field(
        False,
        description="train on every judged edit, accepted or not (only as a control experiment)",
    )
    eval_origin: str = Field(
        "heldout",
        description="origin (dataset name given to `editloop ingest --origin`) of the held-out "
        "tasks the gate edits; never trained on",
    )
    eval_tasks: int = Field(16, gt=0, description="held-out tasks edited per gate evaluation")
    eval_margin: float = Field(
        0.0, ge=0, description="promote unless the mean overall score drops by more than this"
    )
    eval_seed: int = Field(0, ge=0, description="edit seeds of the held-out tasks (task id added)")

    @model_validator(mode="after")
    def _check_nodes(self) -> "TrainingSettings":
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank={self.node_rank} is not below nnodes={self.nnodes}")
        if self.nnodes > 1:
            if self.launcher != "torchrun":
                raise ValueError(
                    f"nnodes={self.nnodes} with launcher={self.launcher}: several nodes train "
                    "under torchrun (set launcher=torchrun)"
                )
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(
                    f"rdzv_endpoint={self.rdzv_endpoint!r}: nnodes={self.nnodes} needs node 0's "
                    "host:port (e.g. trainer-0:29500), the same on every node"
                )
        return self

    @field_validator("recipe")
    @classmethod
    def _check_recipe(cls, recipe: dict[str, Any]) -> dict[str, Any]:
        per_job = {"model", "manifest", "output_dir", "init_checkpoint"}
        fixed = sorted(per_job & set(recipe))
        if fixed:
            raise ValueError(f"recipe sets {fixed}: the trainer sets these per job")
        # Built once here so that a bad key or value fails at startup, not in the first job.
        try:
            TrainConfig(model="-", manifest="-", output_dir="-", **recipe)
        except TypeError as exc:  # an unknown key
            raise ValueError(f"recipe: {exc}") from None
        return recipe
