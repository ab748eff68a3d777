"""The gallery: one row per held-out compound task, edits framed by whether they are right."""

from pathlib import Path

from PIL import Image

from loop.benchmark.gallery import PAD, RIGHT, SCALE, TEXT_WIDTH, WRONG, Column, write_gallery
from policies.pixel_pretrain import eval_tasks


def test_edits_are_upscaled_and_framed_green_when_right_red_when_wrong(tmp_path: Path) -> None:
    _, tasks = eval_tasks(2)
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.mkdir()
    wrong.mkdir()
    for index, task in enumerate(tasks):
        task.target_image().save(right / f"{index:03d}.png")
        task.source_image().save(wrong / f"{index:03d}.png")  # nothing done
    (wrong / "001.png").unlink()  # a missing edit is left blank
    columns = [Column("right", right), Column("wrong", wrong)]
    path = write_gallery(columns, 2, tmp_path / "gallery.png")
    size = 16 * SCALE
    with Image.open(path) as image:
        assert image.size == (TEXT_WIDTH + 4 * (size + PAD) + PAD, 28 + 2 * (size + PAD) + PAD)

        def frame(column: int, row: int) -> tuple[int, int, int]:
            x = TEXT_WIDTH + PAD + column * (size + PAD)
            return image.getpixel((x - 2, 28 + row * (size + PAD) + size // 2))

        assert frame(1, 0) == RIGHT and frame(2, 0) == WRONG
        assert frame(2, 1) == (255, 255, 255)  # no edit, no frame
        # The source, upscaled with nearest-neighbour: each scene pixel a SCALE x SCALE block.
        x, y = TEXT_WIDTH + PAD, 28
        source = tasks[0].source_image()
        assert image.getpixel((x + SCALE - 1, y + SCALE - 1)) == source.getpixel((0, 0))
