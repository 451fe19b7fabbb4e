"""The shipped NLA exported in the official layout (real SmolLM2): what transformers 4.57 needs is there, and
nla reads the export back to the same AR. The official client itself runs in bench/interop_official.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from nla.cli import main
from nla.explain.api import resolve_nla_paths
from nla.models.ar import ActivationReconstructor

pytestmark = pytest.mark.slow

TEXTS = ['Final token: " is". Next: " Italy".', "a list of fruits"]


def test_export_official_of_the_shipped_nla(tmp_path: Path) -> None:
    assert main(["export", "--format", "official", "--out", str(tmp_path / "out")]) == 0
    for role in ("av", "ar"):
        side = yaml.safe_load((tmp_path / "out" / role / "nla_meta.yaml").read_text())
        assert side["extraction"]["mse_scale"] == 24.0 and side["extraction_layer_index"] == 20
        assert side["tokens"]["injection_token_id"] == 32557
        assert side["tokens"]["critic_suffix_ids"] == [2692, 46, 2067, 18347, 46]  # the official tail
        cfg = json.loads((tmp_path / "out" / role / "config.json").read_text())
        assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"] == 100000.0  # 4.57 reads rope_theta
        tok = json.loads((tmp_path / "out" / role / "tokenizer_config.json").read_text())
        assert tok["tokenizer_class"] == "PreTrainedTokenizerFast" and tok["bos_token"] is None
    assert (
        yaml.safe_load((tmp_path / "out" / "av" / "nla_meta.yaml").read_text())["extraction"]["injection_scale"] == 250
    )
    shipped = ActivationReconstructor.from_pretrained(resolve_nla_paths(None, None)[1])
    exported = ActivationReconstructor.from_pretrained(tmp_path / "out" / "ar")
    torch.testing.assert_close(exported.predict(TEXTS), shipped.predict(TEXTS), atol=1e-4, rtol=1e-4)
