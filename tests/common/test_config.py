"""nla.common.config: flat configs (every command) and configs made of sections (the pipeline)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from nla.common.config import (
    add_config_args,
    config_from_args,
    config_to_dict,
    fill_section,
    flag_values,
    make_config,
    merge,
    nest,
    option,
    section,
)
from nla.common.errors import NLAError


@dataclass
class Train:
    steps: int = option(100, "Steps.")
    lr: float = option(1e-3, "Learning rate.")
    lora: bool = option(False, "LoRA.")
    sizes: list[int] = option([1, 2], "Sizes.")
    out_dir: str = option("runs/x", "Where.")
    seed: int = option(0, "Seed.")

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError("steps must be >= 1")


@dataclass
class Inner:
    rows: int = option(4, "Rows.")
    train: Train = section(Train, "The inner trainer.", managed={"out_dir": "a path"}, steps=7)


@dataclass
class Outer:
    seed: int = option(0, "Shared seed.")
    first_stage: Train = section(Train, "First.", managed={"out_dir": "a path", "seed": "the top-level seed"}, lr=0.5)
    inner: Inner = section(Inner, "Nested.")


def parse(cls: type, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_config_args(p, cls)
    return p.parse_args(argv)


def test_flat_config_flags_yaml_and_unknown_keys(tmp_path) -> None:
    assert config_from_args(Train, parse(Train, ["--lr", "0.5", "--lora", "--sizes", "3"])) == Train(
        lr=0.5, lora=True, sizes=[3]
    )
    yml = tmp_path / "c.yaml"
    yml.write_text("steps: 5\nlr: 0.1\n")
    cfg = config_from_args(Train, parse(Train, ["--config", str(yml), "--lr", "0.2"]))
    assert (cfg.steps, cfg.lr) == (5, 0.2)  # flags over the file
    with pytest.raises(NLAError, match=r"unknown option key\(s\) for Train: stepz; known: .*steps"):
        make_config(Train, {"stepz": 1}, source="option")
    with pytest.raises(NLAError, match="bad config for Train: steps must be >= 1"):
        make_config(Train, {"steps": 0})
    assert config_to_dict(Train()) == {"steps": 100, "lr": 1e-3, "lora": False, "sizes": [1, 2],
                                       "out_dir": "runs/x", "seed": 0}  # fmt: skip


def test_sections_get_dotted_flags_grouped_by_section_without_managed_fields() -> None:
    p = argparse.ArgumentParser()
    add_config_args(p, Outer)
    text = p.format_help()
    for flag in ("--seed", "--first-stage.steps", "--first-stage.lr", "--inner.rows", "--inner.train.steps"):
        assert flag in text, flag
    assert "--first-stage.out-dir" not in text and "--first-stage.seed" not in text
    assert "--inner.train.seed" in text and "--inner.train.out-dir" not in text
    assert "first_stage options (Train)" in text and "inner.train options (Train)" in text
    assert "(default: 0.5)" in text and "(default: 7)" in text  # the section's own defaults
    ns = p.parse_args(["--first-stage.lr", "0.25", "--inner.train.steps", "3", "--seed", "2"])
    assert flag_values(Outer, ns) == {"seed": 2, "first_stage": {"lr": 0.25}, "inner": {"train": {"steps": 3}}}
    cfg = config_from_args(Outer, ns)
    assert (cfg.seed, cfg.first_stage.lr, cfg.first_stage.steps, cfg.inner.train.steps) == (2, 0.25, 100, 3)
    with pytest.raises(SystemExit):
        p.parse_args(["--first-stage.out-dir", "x"])


def test_section_mappings_merge_over_the_section_defaults(tmp_path) -> None:
    cfg = make_config(Outer, {"first_stage": {"steps": 9}, "inner": {"train": {"lr": 0.1}}})
    assert (cfg.first_stage.steps, cfg.first_stage.lr) == (9, 0.5)  # lr stays the section's default
    assert (cfg.inner.rows, cfg.inner.train.steps, cfg.inner.train.lr) == (4, 7, 0.1)
    assert make_config(Outer, {"first_stage": None}) == Outer()  # an empty YAML section
    given = Train(steps=2)
    assert make_config(Outer, {"first_stage": given}).first_stage is given
    yml = tmp_path / "c.yaml"
    yml.write_text("first_stage:\n  steps: 5\n  lr: 0.3\ninner:\n  train:\n    steps: 6\n")
    cfg = config_from_args(Outer, parse(Outer, ["--config", str(yml), "--first-stage.lr", "0.2"]))
    assert (cfg.first_stage.steps, cfg.first_stage.lr, cfg.inner.train.steps) == (5, 0.2, 6)


def test_section_errors_name_the_section_and_its_known_keys() -> None:
    with pytest.raises(NLAError, match=r"key\(s\) for Outer: first; known: first_stage, inner, seed$"):
        make_config(Outer, {"first": {}})
    with pytest.raises(NLAError, match=r"for Train in section first_stage: stepz; known: lora, lr, sizes, steps$"):
        make_config(Outer, {"first_stage": {"stepz": 1}})
    with pytest.raises(NLAError, match=r"for Train in section inner\.train: x; known: lora, lr, seed, sizes, steps$"):
        make_config(Outer, {"inner": {"train": {"x": 1}}})
    with pytest.raises(NLAError, match=r"first_stage\.seed cannot be set \(the top-level seed\)"):
        make_config(Outer, {"first_stage": {"seed": 0}})
    with pytest.raises(NLAError, match=r"inner\.train\.out_dir cannot be set \(a path\)"):
        make_config(Outer, {"inner": {"train": {"out_dir": "y"}}})
    with pytest.raises(NLAError, match="section inner must be a mapping"):
        make_config(Outer, {"inner": [1]})
    with pytest.raises(NLAError, match="bad config for Train in section inner.train: steps must be >= 1"):
        make_config(Outer, {"inner": {"train": {"steps": 0}}})
    with pytest.raises(TypeError):  # a default for a field the section does not have
        section(Train, "x", stepz=1)
    with pytest.raises(TypeError):  # a managed field may not also get a default
        section(Train, "x", managed={"seed": "y"}, seed=1)


def test_config_to_dict_leaves_out_managed_fields_and_loads_back() -> None:
    cfg = make_config(Outer, {"seed": 3, "first_stage": {"steps": 2}, "inner": {"train": {"lora": True}}})
    plain = config_to_dict(cfg)
    assert "out_dir" not in plain["first_stage"] and "seed" not in plain["first_stage"]
    assert "out_dir" not in plain["inner"]["train"] and plain["inner"]["train"]["seed"] == 0
    assert make_config(Outer, plain) == cfg


def test_fill_section_sets_exactly_the_managed_fields() -> None:
    cfg = Outer(seed=4)
    from pathlib import Path

    filled = fill_section(cfg, "first_stage", out_dir=Path("a/b"), seed=cfg.seed)
    assert (filled.out_dir, filled.seed, filled.lr) == ("a/b", 4, 0.5) and cfg.first_stage.out_dir == "runs/x"
    assert fill_section(cfg, "inner.train", out_dir="c").out_dir == "c"
    with pytest.raises(TypeError, match="manages"):
        fill_section(cfg, "first_stage", out_dir="a")  # the seed is missing


def test_nest_and_merge() -> None:
    assert nest({"a.b": 1, "a.c.d": 2, "e": 3}) == {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    assert nest({"a": {"b": 1}, "a.c": 2}) == {"a": {"b": 1, "c": 2}}
    with pytest.raises(NLAError, match="not a section"):
        nest({"a": 1, "a.b": 2})
    assert merge({"a": {"b": 1, "c": 2}, "x": [1]}, {"a": {"c": 3}, "x": [2]}) == {"a": {"b": 1, "c": 3}, "x": [2]}
