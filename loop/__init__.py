"""editloop's top: settings, the CLI, ingest, the round controller and metrics."""

import os

# diffusers/transformers warn at import that torchvision is absent and they use the PIL image
# processors, which is exactly what editloop wants; keep the terminal for what matters.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
