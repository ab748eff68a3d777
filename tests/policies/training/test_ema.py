"""The EMA of the trained weights is kept in fp32 even when the weights are bf16."""

import pytest
import torch

from policies.training.ema import FP32EMA

STEPS, DECAY = 2000, 0.999


def drift(base: torch.Tensor, step: int) -> torch.Tensor:
    """Weights ~N(0, 0.02) moving by +0.002 over the run (a slow fine-tune)."""
    return base + 0.002 * (step + 1) / STEPS


def test_a_bf16_model_s_average_follows_the_exact_one() -> None:
    torch.manual_seed(0)
    base = torch.randn(4096) * 0.02
    weights = torch.nn.Parameter(base.to(torch.bfloat16))
    ema = FP32EMA([weights], DECAY)
    in_bf16 = base.to(torch.bfloat16)  # the same average kept in the weights' dtype
    exact = base.double()
    for step in range(STEPS):
        with torch.no_grad():
            weights.copy_(drift(base, step))
        ema.step([weights])
        in_bf16.lerp_(weights.detach(), 1 - DECAY)
        exact = DECAY * exact + (1 - DECAY) * weights.detach().double()
    assert ema.shadow[0].dtype == torch.float32 and ema.steps == STEPS
    moved = (exact - base.double()).mean()
    assert (ema.shadow[0].double() - base.double()).mean() / moved == pytest.approx(1, abs=1e-3)
    # What a bf16 shadow does instead: most of each small step rounds away.
    assert (in_bf16.double() - base.double()).mean() / moved < 0.5


def test_copy_store_restore_and_state_round_trip() -> None:
    weights = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    ema = FP32EMA([weights], 0.5)
    with torch.no_grad():
        weights.fill_(1.0)
    ema.step([weights])  # shadow 0.5
    ema.store([weights])
    ema.copy_to([weights])
    assert weights.dtype == torch.bfloat16 and torch.equal(
        weights, torch.full((3,), 0.5).bfloat16()
    )
    ema.restore([weights])
    assert torch.equal(weights, torch.ones(3, dtype=torch.bfloat16))
    again = FP32EMA([weights], 0.9)
    again.load_state_dict(ema.state_dict())
    assert (again.decay, again.steps) == (0.5, 1)
    assert torch.equal(again.shadow[0], torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="shapes"):
        FP32EMA([torch.nn.Parameter(torch.zeros(4))], 0.5).load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="decay=1"):
        FP32EMA([weights], 1)
