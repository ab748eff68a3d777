"""The pixel judge: scores from a known mask, no model."""

import pytest
from PIL import Image

from rewards.pixel_judge import PIXEL_DIMENSIONS, PixelJudge
from rewards.types import JudgeItem, ParseStatus
from store.taxonomy import EditType

SIZE = 32
SOURCE = Image.new("RGB", (SIZE, SIZE), (40, 80, 120))


def mask(box: tuple[int, int, int, int] = (8, 8, 24, 24)) -> Image.Image:
    """A 16x16 edit region in the middle: 256 of the 1024 pixels."""
    region = Image.new("L", (SIZE, SIZE), 0)
    region.paste(255, box)
    return region


def item(edited: Image.Image, region: Image.Image | None = None) -> JudgeItem:
    return JudgeItem(SOURCE, edited, "paint the square red", EditType.ALTER, region or mask())


def test_a_clean_edit_scores_5() -> None:
    edited = SOURCE.copy()
    edited.paste((255, 0, 0), (8, 8, 24, 24))
    (scores,) = PixelJudge().score([item(edited)])
    # Inside: every pixel changes by max(215, 80, 120) / 255 = 0.84 >= 0.25 -> 5; all covered
    # -> 5; outside untouched -> 5.
    assert (scores.following, scores.quality, scores.preservation) == (5.0, 5.0, 5.0)
    assert scores.overall == 5.0 and scores.status == ParseStatus.OK
    assert scores.dimension_names == PIXEL_DIMENSIONS and scores.model == "pixel-judge"


def test_a_noop_scores_1_through_the_cap() -> None:
    (scores,) = PixelJudge().score([item(SOURCE.copy())])
    # Nothing changed: following 1, coverage 1, preservation 5 capped to 1.
    assert (scores.following, scores.quality, scores.preservation) == (1.0, 1.0, 1.0)
    assert scores.status == ParseStatus.CAPPED


def test_half_the_region_and_damage_outside() -> None:
    edited = SOURCE.copy()
    edited.paste((255, 0, 0), (8, 8, 24, 16))  # the top half of the region only
    (half,) = PixelJudge().score([item(edited)])
    # Inside: half the pixels change by 0.84 -> mean 0.42 >= 0.25 -> 5; coverage 0.5 -> 1 + 2 = 3.
    assert (half.following, half.quality, half.preservation) == (5.0, 3.0, 5.0)
    assert half.overall == pytest.approx(13 / 3)
    spilled = edited.copy()
    spilled.paste((40, 80, 200), (0, 0, SIZE, 4))  # 128 pixels outside change by 80/255
    (damaged,) = PixelJudge().score([item(spilled)])
    # Outside: 128 of 768 pixels at 0.3137 -> mean 0.0523 >= 0.05 tolerance -> 1.
    assert damaged.preservation == 1.0


def test_an_edited_image_of_another_size_is_compared_at_the_source_size() -> None:
    edited = SOURCE.copy()
    edited.paste((255, 0, 0), (8, 8, 24, 24))
    (scores,) = PixelJudge().score([item(edited.resize((64, 64), Image.Resampling.NEAREST))])
    assert scores.following == 5.0 and scores.preservation == 5.0


def test_bad_masks_are_refused() -> None:
    judge = PixelJudge()
    no_mask = JudgeItem(SOURCE, SOURCE, "x", EditType.ALTER)
    with pytest.raises(ValueError, match=r"items\[0\].mask is None"):
        judge.score([no_mask])
    with pytest.raises(ValueError, match="mask is"):
        judge.score([item(SOURCE, Image.new("L", (16, 16), 255))])
    with pytest.raises(ValueError, match="empty"):
        judge.score([item(SOURCE, Image.new("L", (SIZE, SIZE), 0))])
