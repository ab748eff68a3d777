"""editloop's top: the round controller, metrics, settings, ingest, gc and runtime at this level;
`cli/` (the `editloop` command), `training/` (training jobs) and `benchmark/` (the
self-improvement benchmark) as wings (docs/design.md, "Parts")."""

import os

# diffusers/transformers warn at import that torchvision is absent and they use the PIL image
# processors, which is exactly what editloop wants; keep the terminal for what matters.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
