"""`editloop bench`'s option parsing, the README table generated from results.json, and reports of
several runs merged."""

import json
from pathlib import Path

import pytest

from loop.cli.bench import (
    README_BEGIN,
    README_END,
    _parse_noise,
    _parse_recipe,
    readme_table,
    write_readme_table,
)
from loop.cli.errors import UserError
from tests.loop.cli.test_app import editloop


def test_recipe_overrides_are_typed_and_checked() -> None:
    assert _parse_recipe(["zero_stage=3", "learning_rate=1e-4", "progress_bar=true"]) == {
        "zero_stage": 3,
        "learning_rate": 1e-4,
        "progress_bar": True,
    }
    with pytest.raises(ValueError, match="not a recipe field"):
        _parse_recipe(["zero_stages=3"])
    with pytest.raises(ValueError, match="not a int"):
        _parse_recipe(["zero_stage=three"])
    with pytest.raises(ValueError, match="zero_stage=4 is not valid"):
        _parse_recipe(["zero_stage=4"])
    assert _parse_noise("0, 0.1,0.25") == (0.0, 0.1, 0.25)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arms", "best-of-k"], "best-of-k takes its budget from the hindsight arm"),
        (["--recipe", "nope=1"], "not a recipe field"),
    ],
)
def test_bad_options_are_usage_errors_before_anything_runs(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = editloop("bench", "self-improve", "--out", str(tmp_path / "out"), *args, cwd=tmp_path)
    assert (
        result.returncode == 2 and result.stderr.startswith("error: ") and message in result.stderr
    )
    assert not (tmp_path / "out").exists()


def test_the_readme_table_is_rewritten_between_its_markers(tmp_path: Path) -> None:
    rows = [
        {
            "arm": "hindsight",
            "round": number,
            "seed": 0,
            "noise": 0.0,
            "evaluation": {"compound_successes": [number > 0], "single_op_successes": [True]},
            "loop": {},
            "train": {},
            "seconds": {},
        }
        for number in (0, 1)
    ]
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nold table\n{README_END}\nafter\n")
    write_readme_table(readme, rows)
    assert (
        readme.read_text() == f"intro\n{README_BEGIN}\n{readme_table(rows)}\n{README_END}\nafter\n"
    )
    assert "| hindsight | one-step compound | 0.000 ± 0.000 | 1.000 ± 0.000 |" in readme.read_text()
    (tmp_path / "bare.md").write_text("no markers\n")
    with pytest.raises(UserError, match="no .* block"):
        write_readme_table(tmp_path / "bare.md", rows)


def results_file(path: Path, seed: int, seconds: float) -> Path:
    rows = [
        {
            "arm": "hindsight",
            "round": number,
            "seed": seed,
            "noise": 0.0,
            "evaluation": {"compound_successes": [number > 0], "single_op_successes": [True]},
            "loop": {},
            "train": {},
            "seconds": {},
        }
        for number in (0, 1)
    ]
    path.mkdir(parents=True)
    payload = {"config": {}, "seconds": seconds, "failures": [], "results": rows}
    (path / "results.json").write_text(json.dumps(payload))
    return path / "results.json"


def test_report_merges_runs_of_other_seeds_and_refuses_overlaps(tmp_path: Path) -> None:
    first = results_file(tmp_path / "a", 0, 60.0)
    second = results_file(tmp_path / "b", 1, 120.0)
    out = tmp_path / "merged"
    result = editloop("bench", "report", str(first), str(second), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    merged = json.loads((out / "results.json").read_text())
    assert sorted((r["seed"], r["round"]) for r in merged["results"]) == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    assert merged["seconds"] == 180.0 and merged["runs"] == 2
    assert "Seeds [0, 1]" in (out / "self_improve.md").read_text()
    # The same seed twice, or a merge written over one of its inputs: one-line errors.
    again = editloop("bench", "report", str(first), str(first), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 1 and "in more than one results file" in again.stderr
    over = editloop("bench", "report", str(first), str(second), cwd=tmp_path)
    assert over.returncode == 1 and "would overwrite" in over.stderr
    assert json.loads(first.read_text())["seconds"] == 60.0  # untouched
