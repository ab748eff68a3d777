"""Judge prompts: editloop's own per edit type, and a user's ImgEdit prompts.json."""

import json
import re
from pathlib import Path

import pytest

from rewards.prompts import (
    DIMENSIONS,
    PLACEHOLDER,
    editloop_prompt,
    editloop_prompts,
    image_count,
    judge_prompt,
    load_imgedit_prompts,
)
from store.taxonomy import EditType


def test_dimension_table_follows_judge_md() -> None:
    assert DIMENSIONS[EditType.ALTER] == (
        "Prompt Compliance", "Visual Seamlessness", "Physical & Detail Fidelity",
    )  # fmt: skip
    assert DIMENSIONS[EditType.HYBRID] == (
        "Instruction Compliance", "Visual Naturalness", "Physical Consistency & Fine Detail",
    )  # fmt: skip
    assert DIMENSIONS[EditType.EXTRACT] == ("Object Identity", "Mask Precision", "Visual Quality")
    assert set(DIMENSIONS) == set(EditType)


@pytest.mark.parametrize("edit_type", list(EditType))
def test_own_prompt_structure(edit_type: EditType) -> None:
    prompt = editloop_prompt(edit_type)
    names = DIMENSIONS[edit_type]
    assert prompt.count(PLACEHOLDER) == 1
    # Three numbered dimensions in table order, each followed by rubric lines 1..5.
    headers = re.findall(r"^(\d)\. ([^:]+):", prompt, flags=re.MULTILINE)
    assert headers == [("1", names[0]), ("2", names[1]), ("3", names[2])]
    for block in re.split(r"^\d\. ", prompt, flags=re.MULTILINE)[1:]:
        levels = re.findall(r"^([1-5]): \S", block, flags=re.MULTILINE)
        assert levels == ["1", "2", "3", "4", "5"]
    assert f"{names[1]} and {names[2]} must not be higher than {names[0]}" in prompt
    tail = prompt.splitlines()[-4:]
    assert tail == ["Brief reasoning: <at most 20 words>", *(f"{n}: <1-5>" for n in names)]
    pair = "first image is the original" in prompt
    assert pair == (image_count(edit_type) == 2)


def test_judge_prompt_substitutes_the_instruction() -> None:
    text = judge_prompt(editloop_prompts(), EditType.ADD, "add a red kite")
    assert '"add a red kite"' in text and PLACEHOLDER not in text
    assert image_count(EditType.EXTRACT) == 1 and image_count(EditType.ADD) == 2


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def imgedit_like(names: tuple[str, str, str]) -> str:
    return "Rate <edit_prompt>.\n" + "\n".join(f"{n}: <1-5>" for n in names)


def test_imgedit_prompts_map_adjust_and_compose(tmp_path: Path) -> None:
    data = {
        "adjust": imgedit_like(DIMENSIONS[EditType.ALTER]),
        "compose": imgedit_like(DIMENSIONS[EditType.HYBRID]),
        "replace": imgedit_like(DIMENSIONS[EditType.REPLACE]),
    }
    prompts = load_imgedit_prompts(write(tmp_path, data))
    assert prompts.origin == str(tmp_path / "prompts.json")
    assert prompts.templates[EditType.ALTER] == data["adjust"]
    assert prompts.templates[EditType.HYBRID] == data["compose"]
    # Types the file lacks (ImgEdit has none for visual-reference / other) keep our prompt.
    assert prompts.templates[EditType.OTHER] == editloop_prompt(EditType.OTHER)
    assert prompts.templates[EditType.STYLE] == editloop_prompt(EditType.STYLE)
    assert judge_prompt(prompts, EditType.ALTER, "make it red").startswith("Rate make it red.")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read it as JSON"),
        ("[1, 2]", "expected a non-empty object"),
        ("{}", "expected a non-empty object"),
        (json.dumps({"recolor": "x <edit_prompt>"}), "unknown edit type 'recolor'"),
        (json.dumps({"add": "no placeholder"}), "has no <edit_prompt> placeholder"),
        (json.dumps({"add": 3}), "has no <edit_prompt> placeholder"),
        (json.dumps({"add": "Rate <edit_prompt>. Prompt Compliance: <1-5>"}),
         "Visual Naturalness, Physical & Detail Coherence"),
    ],
)  # fmt: skip
def test_bad_prompt_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(message)):
        load_imgedit_prompts(path)


def test_missing_prompt_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        load_imgedit_prompts(tmp_path / "nope.json")
