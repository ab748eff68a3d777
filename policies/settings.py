"""The `editor` section of the settings: which diffusers editor to run and how."""

from typing import Literal

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
    dtype: str = Field(
        "auto",
        description="float32, bfloat16, float16, or auto (bf16 on GPU): the weights are loaded "
        "in it, shard by shard, straight onto the device",
    )
    steps: int | None = Field(
        None,
        gt=0,
        description="denoising steps per edit; empty = the pipeline's usual value "
        "(InstructPix2Pix 20, FLUX.1 Kontext 28, Qwen-Image-Edit 50)",
    )
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
    max_pixels: int | None = Field(
        None,
        gt=0,
        description="largest working size in pixels; larger sources are scaled down (aspect kept) "
        "and every result is given back at its source's size; empty = the pipeline's class "
        "(InstructPix2Pix 512x512, FLUX.1 Kontext and Qwen-Image-Edit 1024x1024)",
    )
    offload: Literal["none", "model", "sequential"] = Field(
        "none",
        description="GPU memory: none (every component on the device), model (diffusers' model "
        "CPU offload: one component on the GPU at a time, the others in host memory), sequential "
        "(one layer at a time: least memory, slowest)",
    )
    vae_slicing: bool = Field(
        False, description="decode a batch's latents one image at a time (less VAE memory)"
    )
    vae_tiling: bool = Field(
        False, description="encode and decode large images in overlapping tiles (less VAE memory)"
    )
    scheduler: str = Field(
        "default",
        description="diffusers scheduler class compatible with the pipeline, or default (the "
        "model's own)",
    )
