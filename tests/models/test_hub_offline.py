"""HF Hub ids offline: one clear line within seconds, no retries (the probe is bounded by its timeout)."""

from __future__ import annotations

import socket
import time

import pytest

from nla.common.errors import NLAError
from nla.models import target as tmod


@pytest.fixture
def fresh_probe():
    tmod.hub_offline.cache_clear()
    yield
    tmod.hub_offline.cache_clear()


def test_unreachable_hub_is_offline_and_unknown_id_fails_fast(fresh_probe, monkeypatch) -> None:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def refused(*args, **kw):
        raise OSError("no network")

    monkeypatch.setattr(socket, "create_connection", refused)
    t0 = time.perf_counter()
    with pytest.raises(NLAError, match="not in the local HF cache and the Hugging Face Hub is not reachable"):
        tmod.load_target("nosuchorg/nosuch-model")
    assert time.perf_counter() - t0 < 10 and tmod.hub_offline()


def test_a_hanging_probe_is_cut_at_its_timeout(fresh_probe, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(tmod, "HUB_PROBE_SECONDS", 0.3)

    def hangs(*args, **kw):
        time.sleep(3)
        raise OSError("timed out")

    monkeypatch.setattr(socket, "create_connection", hangs)
    t0 = time.perf_counter()
    assert tmod.hub_offline() and time.perf_counter() - t0 < 2


def test_env_offline_and_ids(fresh_probe, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert tmod.hub_offline()
    assert tmod.is_hub_id("org/name") and tmod.is_hub_id("gpt2")
    assert not tmod.is_hub_id("a/b/c") and not tmod.is_hub_id(str(tmp_path)) and not tmod.is_hub_id("../x")
    assert tmod.hub_kwargs("org/name") == {"local_files_only": True} and tmod.hub_kwargs(str(tmp_path)) == {}


def test_context_limit_ignores_the_tokenizer_sentinel() -> None:
    from types import SimpleNamespace

    tok = SimpleNamespace(model_max_length=int(1e30))
    assert tmod.context_limit(SimpleNamespace(max_position_embeddings=8192), tok) == (8192, "max_position_embeddings")
    tok.model_max_length = 2048
    assert tmod.context_limit(SimpleNamespace(max_position_embeddings=8192), tok)[0] == 2048
    assert tmod.context_limit(SimpleNamespace(), None) == (None, "")
