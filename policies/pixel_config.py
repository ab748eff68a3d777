"""The pixel editor's configuration (saved with every checkpoint as `editor_config.json`).

Apart from the model code so that settings and benchmark configurations can name it without
importing torch.
"""

from dataclasses import dataclass

from worlds.shapes.language import MAX_CLAUSE_WORDS, VOCABULARY
from worlds.shapes.types import DEFAULT_SIZE, MAX_OPERATIONS

PAD = "<pad>"
CONFIG_NAME = "editor_config.json"


@dataclass(frozen=True)
class PixelEditorConfig:
    """Architecture and sampling settings of a pixel editor (saved with the checkpoint)."""

    size: int = DEFAULT_SIZE  # image side, pixels
    vocabulary: tuple[str, ...] = (PAD, *VOCABULARY)  # words; index 0 is padding
    clause_length: int = MAX_CLAUSE_WORDS  # words per slot
    max_clauses: int = MAX_OPERATIONS  # slots
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # UNet channels per resolution
    embedding_dim: int = 64  # word embedding = cross-attention dim
    num_train_timesteps: int = 1000  # DDPM steps
    prediction_type: str = "sample"  # x0-prediction, as the experiments
    sampling_steps: int = 10  # DDIM steps per edit
    eta: float = 1.0  # DDIM stochasticity (1 = DDPM-like), as the experiments

    @property
    def sequence_length(self) -> int:
        return self.clause_length * self.max_clauses
