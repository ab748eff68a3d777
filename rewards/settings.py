"""The `judge` section of the settings: scorer, reflector and verdict thresholds."""

from pydantic import BaseModel, Field


class JudgeSettings(BaseModel):
    """The judges. An empty `model` means: the tiny local Qwen2.5-VL (demo/tests)."""

    model: str = Field("", description="Qwen2.5-VL folder of the ImgEdit-Judge; empty = tiny")
    device: str = Field("cpu", description="torch device, e.g. cpu or cuda:0")
    batch_size: int = Field(8, gt=0, description="pairs per judge call")
    max_reflections: int = Field(2, ge=0, description="reflection rounds per sample (ReasonEdit: 2)")
