"""The `editor` section of the settings: which diffusers editor to run and how."""

from pydantic import BaseModel, ConfigDict, Field


class EditorSettings(BaseModel):
    """The editor (policy). An empty `model` means: the tiny local InstructPix2Pix (demo/tests)."""

    # A misspelt key in a config file is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "", description="diffusers folder or cached hub id; empty = tiny local model"
    )
    pipeline: str = Field("auto", description="pipeline class name, or auto from model_index.json")
    device: str = Field("cpu", description="torch device, e.g. cpu or cuda:0")
    dtype: str = Field("auto", description="float32, bfloat16, float16, or auto (bf16 on GPU)")
    steps: int = Field(20, gt=0, description="denoising steps per edit")
    batch_size: int = Field(8, gt=0, description="requests per pipeline call")
    guidance_scale: float | None = Field(
        None,
        ge=0,
        description="text guidance (Qwen-Image-Edit: true CFG scale); empty = the pipeline's usual "
        "value (InstructPix2Pix 7.5, FLUX.1 Kontext 2.5, Qwen-Image-Edit 4.0)",
    )
    image_guidance_scale: float | None = Field(
        None,
        ge=0,
        description="image guidance, InstructPix2Pix only (others refuse it); empty = 1.5",
    )
    max_pixels: int = Field(
        1024 * 1024,
        gt=0,
        description="largest working size in pixels; larger sources are scaled down (aspect kept) "
        "and every result is given back at its source's size",
    )
    scheduler: str = Field(
        "default",
        description="diffusers scheduler class compatible with the pipeline, or default (the "
        "model's own)",
    )
