"""The `worker` section of the settings: broker, queues and time limits."""

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp", "filesystem")


class WorkerSettings(BaseModel):
    """How work is moved. `eager` runs tasks in-process (the embedded default)."""

    # A misspelt key in a config file is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")

    eager: bool = Field(True, description="run Celery tasks in-process instead of via a broker")
    broker_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"), description="Celery broker URL (Redis or AMQP)"
    )
    edit_batch_size: int = Field(8, gt=0, description="attempt ids per edit task")
    judge_batch_size: int = Field(8, gt=0, description="attempt ids per judge task")
    soft_time_limit_s: int = Field(600, gt=0, description="soft time limit of one task")
    time_limit_s: int = Field(
        660,
        gt=0,
        description="hard time limit of one task: the worker's watchdog exits the process when "
        "a task runs longer (Celery's own limits do not apply to the solo pool)",
    )
    broker_folder: str = Field(
        "", description="folder of the local filesystem:// broker (one machine, no server)"
    )
    visibility_timeout_s: int = Field(
        3600, gt=0, description="Redis: seconds before an unacknowledged task is redelivered"
    )
    dispatch_timeout_s: float = Field(
        120,
        gt=0,
        description="pickup timeout: seconds a sent batch may wait while a live worker is free "
        "to take it before it is deemed lost and sent again",
    )
    max_dispatches: int = Field(3, gt=0, description="sends per attempt before it ends Failed")
    max_in_flight: int = Field(
        2, gt=0, description="batches the controller keeps queued or running per live worker"
    )
    heartbeat_s: float = Field(5, gt=0, description="seconds between two worker heartbeats")
    heartbeat_timeout_s: float = Field(
        30,
        gt=0,
        description="a worker whose last heartbeat is older is dead: what it held is sent again",
    )

    @model_validator(mode="after")
    def _beats_fit_the_timeout(self) -> "WorkerSettings":
        if self.heartbeat_timeout_s < 2 * self.heartbeat_s:
            raise ValueError(
                f"heartbeat_timeout_s={self.heartbeat_timeout_s:g} is under two heartbeats "
                f"(heartbeat_s={self.heartbeat_s:g}): a live worker would look dead; raise it"
            )
        return self

    @field_validator("broker_url")
    @classmethod
    def _a_broker_celery_speaks(cls, url: SecretStr) -> SecretStr:
        scheme = url.get_secret_value().partition("://")[0]
        if scheme not in BROKER_SCHEMES or "://" not in url.get_secret_value():
            raise ValueError(
                f"a broker URL starts with one of {', '.join(s + '://' for s in BROKER_SCHEMES)}, "
                "e.g. redis://redis:6379/0"
            )
        return url
