"""The `editor` section of the settings: which diffusers editor to run and how."""

from pydantic import BaseModel, Field


class EditorSettings(BaseModel):
    """The editor (policy). An empty `model` means: the tiny local InstructPix2Pix (demo/tests)."""

    model: str = Field("", description="diffusers folder or cached hub id; empty = tiny local model")
    pipeline: str = Field("auto", description="pipeline class name, or auto from model_index.json")
    device: str = Field("cpu", description="torch device, e.g. cpu or cuda:0")
    dtype: str = Field("auto", description="float32, bfloat16, float16, or auto (bf16 on GPU)")
    steps: int = Field(20, gt=0, description="denoising steps per edit")
    batch_size: int = Field(8, gt=0, description="requests per pipeline call")
