"""Shared fixtures: real services (tests/fixtures/services.py) and tiny models built once."""

import os

# Nothing may be fetched from a hub at test time; tiny models are built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = ["tests.fixtures.services"]
