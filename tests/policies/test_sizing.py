"""Working sizes: multiples, the pixel cap, the aspect ratio (pure, no models)."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.sizing import working_size


@pytest.mark.parametrize(
    ("source", "multiple", "max_pixels", "expected"),
    [
        # Under the cap: only rounded to the nearest multiple, half up (100/8 = 12.5 -> 13 -> 104).
        ((100, 60), 8, 10**9, (104, 64)),
        ((64, 48), 16, 64 * 64, (64, 48)),
        # 40/16 = 2.5 -> 48, 24/16 = 1.5 -> 32.
        ((40, 24), 16, 64 * 64, (48, 32)),
        # Scaled by sqrt(2^20 / 12e6) = 0.2956: 1182.4 x 886.8 -> 1184 x 880 (1,041,920 px <= 2^20).
        ((4000, 3000), 16, 1024 * 1024, (1184, 880)),
        # Scaled by sqrt(4096 / 30000) = 0.3695: 73.9 x 55.4 -> 80 x 48 (3840 px <= 4096).
        ((200, 150), 16, 64 * 64, (80, 48)),
        # Smaller than one block: one block.
        ((1, 1), 16, 256, (16, 16)),
        # Very thin: the short side is held at one block, the long side shrinks to fit the cap.
        ((10000, 3), 16, 4096, (256, 16)),
    ],
)
def test_worked_examples(
    source: tuple[int, int], multiple: int, max_pixels: int, expected: tuple[int, int]
) -> None:
    assert working_size(*source, multiple=multiple, max_pixels=max_pixels) == expected


@given(
    width=st.integers(1, 5000),
    height=st.integers(1, 5000),
    multiple=st.sampled_from([8, 16, 32]),
    blocks=st.integers(1, 5000),
)
def test_properties(width: int, height: int, multiple: int, blocks: int) -> None:
    max_pixels = blocks * multiple * multiple
    w, h = working_size(width, height, multiple=multiple, max_pixels=max_pixels)
    assert w % multiple == 0 and h % multiple == 0
    assert w >= multiple and h >= multiple
    assert w * h <= max_pixels
    # Never upscaled beyond rounding: each side at most the scaled source plus one multiple.
    scale = min(1.0, math.sqrt(max_pixels / (width * height)))
    assert w <= max(multiple, width * scale + multiple)
    assert h <= max(multiple, height * scale + multiple)
    # Aspect ratio kept to within rounding: each side ends within [-1, +1/2] multiple of its
    # scaled target, so with targets of at least 10 multiples the ratio is off by at most
    # 1.05 / 0.9 (log 0.154).
    if width * scale >= 10 * multiple and height * scale >= 10 * multiple:
        assert abs(math.log((w / h) / (width / height))) <= math.log(1.05 / 0.9) + 1e-9


@pytest.mark.parametrize(
    ("width", "height", "multiple", "max_pixels", "named"),
    [
        (0, 10, 8, 1000, "size"),
        (10, -1, 8, 1000, "size"),
        (10, 10, 0, 1000, "multiple"),
        (10, 10, 16, 255, "max_pixels"),
    ],
)
def test_bad_arguments_name_the_argument(
    width: int, height: int, multiple: int, max_pixels: int, named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        working_size(width, height, multiple=multiple, max_pixels=max_pixels)
