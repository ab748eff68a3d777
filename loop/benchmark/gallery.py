"""The gallery: what the editors did to a dozen held-out compound tasks, not only how often they
were right. One row per task: its instruction, the source, the round-0 edit, each later round's
edit of the first arm, the last round's edit of every other arm, and the target; 16×16 scenes
upscaled with nearest-neighbour, each edit framed green when it meets the success criterion and
red when not."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from loop.benchmark.config import SelfImproveConfig, arm_dir, base_gallery_dir, conditions
from policies.pixel_pretrain import eval_tasks
from worlds.shapes.measure import measure_edit

SCALE = 6  # pixels per scene pixel
PAD = 6
TEXT_WIDTH = 330
RIGHT = (40, 160, 60)
WRONG = (200, 40, 40)
FRAME = (170, 170, 170)


@dataclass(frozen=True)
class Column:
    """A column of edits: its title and the folder of `<i>.png` edits (task i of the gallery)."""

    title: str
    folder: Path


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def write_gallery(columns: Sequence[Column], tasks: int, path: Path) -> Path:
    """Draw the gallery of the first `tasks` held-out compound tasks (the evaluation's, in order)
    with `columns` between the source and the target; a missing edit is left blank."""
    if tasks <= 0:
        raise ValueError(f"tasks={tasks}: the gallery needs at least one task")
    _, compounds = eval_tasks(tasks)
    size = compounds[0].size * SCALE
    titles = ["source", *(c.title for c in columns), "target"]
    font = ImageFont.load_default()
    header = 28
    width = TEXT_WIDTH + len(titles) * (size + PAD) + PAD
    height = header + len(compounds) * (size + PAD) + PAD
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for index, title in enumerate(titles):
        x = TEXT_WIDTH + PAD + index * (size + PAD)
        for line_no, line in enumerate(_wrap(title, 16)[:2]):
            draw.text((x, 2 + 12 * line_no), line, fill=(0, 0, 0), font=font)
    for row, task in enumerate(compounds):
        y = header + row * (size + PAD)
        for line_no, line in enumerate(_wrap(f"{row + 1}. {task.instruction}", 52)[:6]):
            draw.text((PAD, y + 4 + 13 * line_no), line, fill=(0, 0, 0), font=font)
        images: list[tuple[Image.Image | None, bool | None]] = [(task.source_image(), None)]
        for column in columns:
            file = column.folder / f"{row:03d}.png"
            if not file.is_file():
                images.append((None, None))
                continue
            with Image.open(file) as loaded:
                edit = loaded.convert("RGB")
            right = measure_edit(task.scene, task.operations, edit, task.size).success
            images.append((edit, right))
        images.append((task.target_image(), None))
        for index, (image, right) in enumerate(images):
            if image is None:
                continue
            x = TEXT_WIDTH + PAD + index * (size + PAD)
            # Edits framed by their outcome; source and target in grey (white scenes show).
            colour = FRAME if right is None else RIGHT if right else WRONG
            draw.rectangle((x - 3, y - 3, x + size + 2, y + size + 2), outline=colour, width=3)
            canvas.paste(image.resize((size, size), Image.Resampling.NEAREST), (x, y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def benchmark_columns(config: SelfImproveConfig) -> list[Column]:
    """The benchmark's gallery columns, from its first seed and judge noise: round 0, every round
    of the first arm (hindsight when it ran), then the last round of each other arm."""
    condition = conditions(config)[0]
    first = "hindsight" if "hindsight" in config.arms else config.arms[0]
    columns = [Column("round 0 (pre-trained)", base_gallery_dir(config, condition.seed))]
    columns += [
        Column(f"{first} round {n}", arm_dir(config, condition, first) / "gallery" / f"round-{n}")
        for n in range(1, config.rounds + 1)
    ]
    columns += [
        Column(
            f"{arm} round {config.rounds}",
            arm_dir(config, condition, arm) / "gallery" / f"round-{config.rounds}",
        )
        for arm in config.arms
        if arm != first
    ]
    return columns
