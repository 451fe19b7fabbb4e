"""The NLA shipped in the package (``nla/data/default_nla``): compact, complete, and working offline."""

from __future__ import annotations

import json

import pytest
import yaml

from nla.cli import main
from nla.evaluate.rerank import DEFAULT_BEST_OF
from nla.explain.api import NLA
from nla.models.target import DEFAULT_TARGET, shipped_nla_folder
from nla.resources import default_nla_dir

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("model", "layer"), [("smollm2-135m", 20), ("gemma3-270m", 12)])
def test_shipped_files_are_compact_adapters_with_sidecars_and_a_card(model: str, layer: int) -> None:
    root = shipped_nla_folder(model)
    if model != DEFAULT_TARGET and not root.exists():
        pytest.skip(f"no NLA is shipped for {model} in this tree")
    files = [f for f in root.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 25 * 2**20
    assert not any(f.suffix in (".bin", ".pt", ".pkl") or f.name == "model.safetensors" for f in files)
    for role in ("av", "ar"):
        meta = yaml.safe_load((root / role / "nla_meta.yaml").read_text())
        assert meta["kind"] == "nla_model" and meta["role"] == role and meta["adapter"] is True
        assert meta["extraction"]["base_model"] == model and meta["extraction"]["layer_index"] == layer
        assert (root / role / "adapter_model.safetensors").exists()
    assert (root / "ar" / "value_head.safetensors").exists()
    card = json.loads((root / "card.json").read_text())
    shipped = card["shipped"]
    assert shipped["fve_shuffled"] <= 0 and shipped["fve_random"] <= 0
    assert {"retrieval_top1_at_8", "tag_failure_rate", "len_mean"} <= set(shipped)
    assert len({ex["shipped"] for ex in card["examples"]}) == len(card["examples"]) >= 4  # all different
    best = f"shipped best-of-{DEFAULT_BEST_OF}"  # what `nla explain` prints by default
    assert card[best]["best_of"] == DEFAULT_BEST_OF and list(card["ladder"])[-2] == best
    assert card[best]["fve_shuffled"] <= 0 and card[best]["fve_random"] <= 0
    assert len({ex[best] for ex in card["examples"]}) == len(card["examples"])
    assert set(card["best_of_transfer"]) == {"reader", "shipped", best}
    assert card["compute"]


def test_default_explains_offline_and_differs_across_inputs(tmp_path, smollm2, capsys) -> None:
    html, jsonl = tmp_path / "r.html", tmp_path / "r.jsonl"
    assert (
        main(
            [
                "explain",
                "The Eiffel Tower is in Paris.",
                "--positions",
                "last",
                "--max-new-tokens",
                "40",
                "--html",
                str(html),
                "--jsonl",
                str(jsonl),
            ]
        )
        == 0
    )
    assert "EMPTY explanation" in capsys.readouterr().out and html.stat().st_size > 1000
    rec = json.loads(jsonl.read_text().splitlines()[0])
    assert rec["fve"] is not None and rec["raw"] and len(rec["samples"]) == DEFAULT_BEST_OF
    nla = NLA.from_pretrained(target=smollm2)  # the shipped default, AV and AR
    a = nla.explain("def add(a, b):\n    return a + b", positions="last", max_new_tokens=40, best_of=1)[0]
    b = nla.explain("My grandmother baked bread every Sunday", positions="last", max_new_tokens=40, best_of=1)[0]
    assert a.raw != b.raw and a.cosine is not None and b.cosine is not None


def test_the_nla_shipped_for_the_target_is_found_by_its_name(tmp_path, monkeypatch, capsys) -> None:
    import nla.explain.api as api
    import nla.models.target
    from nla.common.errors import NLAError

    default = str(default_nla_dir() / "av")
    assert api.resolve_nla_paths(None, None)[0] == default
    assert api.resolve_nla_paths(None, None, "smollm2")[0] == default  # an alias of the default target
    assert api.resolve_nla_paths(None, None, "Qwen/Qwen2.5-0.5B")[0] == default  # any other: d_model decides
    assert api.resolve_nla_paths("my/av", "my/ar", "gemma3-270m") == ("my/av", "my/ar")
    monkeypatch.setattr(nla.models.target, "shipped_nla_dir", lambda name: tmp_path / name)
    with pytest.raises(NLAError, match="no NLA is shipped for gemma3-270m yet.*--preset gemma3-270m"):
        api.resolve_nla_paths(None, None, "gemma-3-270m")
    assert main(["explain", "--model", "gemma3-270m", "hi"]) == 2  # --model is --target
    assert "no NLA is shipped for gemma3-270m" in capsys.readouterr().err
    for role in ("av", "ar"):
        (tmp_path / "gemma3-270m" / role).mkdir(parents=True)
        (tmp_path / "gemma3-270m" / role / "nla_meta.yaml").write_text("{}\n")
    av, ar = api.resolve_nla_paths(None, None, "gemma3")
    assert (av, ar) == (str(tmp_path / "gemma3-270m" / "av"), str(tmp_path / "gemma3-270m" / "ar"))
