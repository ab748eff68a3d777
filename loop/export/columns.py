"""The columns of each export kind: names, types and what they hold (one list per kind).

The image-editing names follow the hub's datasets of edit triples (`source_image`, `instruction`,
`edited_image`, `edit_type`); the rest is provenance. The same list drives every writer, the
Parquet schema and the dataset card.
"""

from dataclasses import dataclass
from enum import StrEnum


class ExportKind(StrEnum):
    EDITS = "edits"
    REFLECTIONS = "reflections"


class ExportFormat(StrEnum):
    HF = "hf"
    WEBDATASET = "webdataset"
    JSONL = "jsonl"


# Column types: a PNG image, or a JSON-like value.
IMAGE, STRING, INT, FLOAT, BOOL, STRINGS = "image", "string", "int64", "float64", "bool", "strings"


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # one of IMAGE, STRING, INT, FLOAT, BOOL, STRINGS (a list of strings)
    description: str


# The two images of every row: the column, and the member suffix in WebDataset shards.
IMAGE_COLUMNS = {"source_image": "source.png", "edited_image": "edited.png"}

_IMAGES_AND_INSTRUCTION = [
    Column("id", STRING, "row key: `e`/`h`/`r` (edit, hindsight, reflection) + the attempt id"),
    Column("source_image", IMAGE, "the image before the edit (PNG)"),
    Column("edited_image", IMAGE, "the edited image (PNG)"),
]

_PROVENANCE = [
    Column("edit_type", STRING, "ImgEdit edit type of the task (add, remove, replace, ...)"),
    Column("task_id", INT, "the task in editloop's database"),
    Column("source_datasets", STRINGS, "every dataset the task arrived from (ingest `--dataset`)"),
    Column(
        "source_licences",
        STRINGS,
        "the licence of each source dataset, in the same order (SPDX id; empty: none given)",
    ),
    Column("run", STRING, "name of the run that made the edit"),
    Column("round", INT, "round number in that run"),
    Column("attempt_id", INT, "the attempt that made `edited_image`"),
    Column("depth", INT, "0 for a first edit; n for the n-th retry of a chain"),
    Column("checkpoint", STRING, "editor checkpoint version (null: the base model)"),
    Column("seed", INT, "the edit's random seed"),
    Column("dimension_names", STRINGS, "names of the three judge scores for this edit type"),
    Column("score_following", FLOAT, "judge score 1-5: instruction following (first dimension)"),
    Column("score_quality", FLOAT, "judge score 1-5: the second dimension"),
    Column("score_preservation", FLOAT, "judge score 1-5: the third dimension"),
    Column("overall", FLOAT, "the judge's overall score"),
    Column("verdict", STRING, "Success, Reflection or Failed: a reviewer's verdict wins"),
    Column("decided_by", STRING, "who gave `verdict`: `judge` or `reviewer`"),
    Column("reviewer", STRING, "the reviewer's name when `decided_by` is `reviewer`"),
    Column("judge_verdict", STRING, "the verdict of the judge and reflector (the verdict rule)"),
    Column("judge_model", STRING, "judge model id"),
    Column("reflector_model", STRING, "reflector model id"),
    Column("source_sha256", STRING, "SHA-256 of the `source_image` bytes"),
    Column("edited_sha256", STRING, "SHA-256 of the `edited_image` bytes"),
]

EDIT_COLUMNS: tuple[Column, ...] = (
    *_IMAGES_AND_INSTRUCTION,
    Column("instruction", STRING, "the instruction that turns `source_image` into `edited_image`"),
    Column(
        "hindsight",
        BOOL,
        "true: the task's source and original instruction → the final image of a successful "
        "reflection chain; false: the attempt's own input and instruction → its output",
    ),
    Column("original_instruction", STRING, "the task's original instruction"),
    *_PROVENANCE,
)

REFLECTION_COLUMNS: tuple[Column, ...] = (
    *_IMAGES_AND_INSTRUCTION,
    Column("instruction", STRING, "the task's original instruction, which the edit is judged by"),
    Column("attempt_instruction", STRING, "the instruction the editor was given for this edit"),
    Column("reasoning", STRING, "the reflector's reasoning (`<#Think>`)"),
    Column("target_description", STRING, "the reflector's description of the intended result"),
    Column("tag", STRING, "the reflector's answer: Success, Reflection or Failed"),
    Column(
        "proposed_instruction",
        STRING,
        "the revised instruction the reflector proposed (kept even with no retry left)",
    ),
    Column("child_attempt_id", INT, "the next attempt of the chain (null: none)"),
    Column("child_instruction", STRING, "the instruction the next attempt was given"),
    Column("child_verdict", STRING, "the next attempt's verdict (null: none, or not judged)"),
    Column(
        "confirmed",
        BOOL,
        "did the proposed instruction succeed? true/false when the next attempt edited this "
        "output with it and was judged; null otherwise",
    ),
    *_PROVENANCE,
)


def columns_for(kind: ExportKind) -> tuple[Column, ...]:
    """The columns of `kind`, in order."""
    return EDIT_COLUMNS if kind == ExportKind.EDITS else REFLECTION_COLUMNS


def value_columns(kind: ExportKind) -> tuple[Column, ...]:
    """Every column but the images (what a JSON record of a row holds)."""
    return tuple(c for c in columns_for(kind) if c.dtype != IMAGE)


def feature_yaml(columns: tuple[Column, ...]) -> list[dict[str, str]]:
    """The columns as `dataset_info.features` of a Hugging Face dataset card."""
    features = []
    for column in columns:
        if column.dtype == STRINGS:
            features.append({"name": column.name, "list": "string"})
        else:
            features.append({"name": column.name, "dtype": column.dtype})
    return features
