from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, request) -> None:
    """Unit tests get an empty NLA_CACHE; slow tests on the real SmolLM2 keep the user's cache."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("NLA_CACHE", str(tmp_path_factory.mktemp("nla_cache")))


@pytest.fixture
def tiny_target():
    from helpers import tiny_target as build

    return build("llama")


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded SmolLM2-135M-Instruct (converted once into the user's cache)."""
    from nla.models.target import load_target

    return load_target("smollm2-135m")
