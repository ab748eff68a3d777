"""The confirmed outcome of a judgment: the reflector's tag, when what followed bears it out.

Pure logic over one selected record (`loop/export/selection.py` reads them, children included):

- `Reflection` is confirmed when its proposal was tested (the chain's next attempt edited this
  output with it) and that attempt reached `Success`;
- `Success` is confirmed when the scorer agreed: the verdict rule's score thresholds pass;
- `Failed` is confirmed as failed.

A reviewer's override that disagrees with the tag leaves it unconfirmed (a person said otherwise);
an `Invalid` answer or a judgment without a reflector has no outcome to confirm.
"""

from loop.export.selection import ExportRecord, proposal_tested
from rewards.verdict import VerdictThresholds, low_scores
from store.taxonomy import Verdict


def scores_of(record: ExportRecord) -> tuple[float, float, float] | None:
    """The record's three scores, None when the judge's answer was unparseable."""
    f, q, p = record.following, record.quality, record.preservation
    if f is None or q is None or p is None or record.overall is None:
        return None
    return (f, q, p)


def scorer_accepts(record: ExportRecord, thresholds: VerdictThresholds) -> bool:
    """Whether the verdict rule's score thresholds pass on the record's scores."""
    dims = scores_of(record)
    if dims is None or record.overall is None:
        return False
    names = record.dimension_names or ("following", "quality", "preservation")
    return not low_scores(names, dims, record.overall, thresholds)


def confirmed_outcome(record: ExportRecord, thresholds: VerdictThresholds) -> str | None:
    """The reflector's tag (a `Verdict` value) when the record's sequel confirms it, else None."""
    tag = record.reflector_tag
    if record.override_verdict is not None and record.override_verdict != tag:
        return None
    if tag == Verdict.REFLECTION.value:
        child = record.child
        succeeded = child is not None and child.verdict == Verdict.SUCCESS.value
        return tag if proposal_tested(record) and succeeded else None
    if tag == Verdict.SUCCESS.value:
        return tag if scorer_accepts(record, thresholds) else None
    if tag == Verdict.FAILED.value:
        return tag
    return None
