"""Shared test set-up: quiet TensorFlow, no GPU surprises, paths to the shared real data."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONHASHSEED", "0")
