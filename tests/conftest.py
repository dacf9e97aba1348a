"""Shared fixtures: tiny real transformers models built from configs (nothing downloaded)."""

from __future__ import annotations

import os

# The tiny test models run fastest on one thread (and child processes inherit this); the machine has 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from gated_lpi_exp.testing import random_olmo, random_olmoe  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "requires_gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_olmoe():
    return random_olmoe()


@pytest.fixture
def tiny_olmo():
    return random_olmo()


@pytest.fixture(autouse=True)
def _isolated_mlflow(tmp_path, monkeypatch):
    """Never write to the user's ./mlflow.db from a test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
