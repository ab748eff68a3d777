"""The `judge` section of the settings: scorer, reflector and verdict thresholds."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class JudgeSettings(BaseModel):
    """The judges. An empty `model` means: the tiny local Qwen2.5-VL (demo/tests)."""

    # A misspelt key in a config file is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")

    backend: Literal["imgedit", "shapes"] = Field(
        "imgedit",
        description="imgedit: the ImgEdit-Judge scorer and ReasonEdit reflector (Qwen2.5-VL); "
        "shapes: the exact judges of the shapes world (rewards/shapes_judge.py)",
    )
    model: str = Field("", description="Qwen2.5-VL folder of the ImgEdit-Judge; empty = tiny")
    device: str = Field(
        "",
        description="torch device of the judge (and reflector), e.g. cuda:1; empty = the "
        "editor's device (`editor.device`) in workers, cpu for `editloop judge`",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights' dtype; auto = bfloat16 on a GPU, float32 on CPU"
    )
    batch_size: int = Field(8, gt=0, description="pairs per judge call")
    max_reflections: int = Field(
        2, ge=0, description="reflection rounds per sample (ReasonEdit: 2)"
    )
    prompts_file: str = Field(
        "", description="ImgEdit prompts.json ({edit_type: prompt}); empty = editloop's own prompts"
    )
    # ImgEdit-Judge's recommended bounds (docs/design.md); the processor resizes images into them.
    min_pixels: int = Field(1016064, gt=0, description="smallest image area fed to the VLM, pixels")
    max_pixels: int = Field(1354752, gt=0, description="largest image area fed to the VLM, pixels")
    continuous: bool = Field(
        False, description="scores as expected values over the digits 1-5 instead of integers"
    )
    max_new_tokens: int = Field(128, gt=0, description="judge answer length limit, tokens")
    reflector_model: str = Field(
        "",
        description="Qwen2.5-VL-Instruct folder of the reflector (the judge's own folder shares "
        "its weights); required with a real ImgEdit-Judge, a scoring fine-tune that does not "
        "follow the reflection format; empty = share the tiny judge's weights",
    )
    reflector_retries: int = Field(
        1, ge=0, description="extra reflector calls after an invalid answer, then `Invalid`"
    )
    reflector_max_new_tokens: int = Field(
        256, gt=0, description="length limit of each reflector answer, tokens"
    )
    success_min_overall: float = Field(
        4.0, ge=1, le=5, description="Success needs an overall score at least this (1-5)"
    )
    success_min_dimension: float = Field(
        3.0, ge=1, le=5, description="Success needs every dimension at least this (1-5)"
    )
    noop_max_change: float = Field(
        0.02,
        ge=0,
        le=1,
        description="no-op guard: an edit changing at most this much (0-1, see rewards/verdict.py) "
        "is never Success",
    )

    @model_validator(mode="after")
    def _check_pixel_bounds(self) -> "JudgeSettings":
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"min_pixels={self.min_pixels} is larger than max_pixels={self.max_pixels}"
            )
        return self
