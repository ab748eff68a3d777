"""Judges of edits: scorers, the ReasonEdit reflector, and the verdict rule (docs/design.md).

Pure logic: `prompts` (rating prompts per edit type), `parsing` (scores out of an answer),
`reflection` (reflector prompts and validator), `verdict` (verdict rule and no-op guard).
Models: `vlm` (Qwen2.5-VL loading and generation), `imgedit_judge` (`ImgEditJudge`), `reflector`
(`ReasonEditReflector`), `tiny` (the offline test model), `factory` (from `JudgeSettings`).
Rule judges: `shapes_judge` (the shapes world's exact scorer and reflector).
"""
