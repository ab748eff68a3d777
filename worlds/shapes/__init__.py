"""The shapes world: small scenes, edit tasks with exact targets, and a pixel criterion of success.

`types` (colours, scenes, operations) is the bottom; `operations` applies operations to scenes;
`pixels` renders scenes and reads them back; `language` phrases and parses instructions;
`partition` splits the task space into pre-training, loop, gate and evaluation parts, disjoint by
a hash of what each task asks; `tasks` generates seeded tasks, from the whole space or one part;
`measure` judges an edited image by its pixels. Instructions are natural sentences drawn from
templates; judging needs no side channel: a source image is an exact render, so
`pixels.recover_scene` reads the scene back, `language.parse_instruction` gives the operations,
and the target follows.
"""
