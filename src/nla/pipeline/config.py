"""The options of ``nla train pipeline``: a few shared ones, then one section per stage (see docs/pipeline.md).

Each section is a stage's own config dataclass (the one its command uses), with the fields the pipeline
fills in itself declared ``managed``. Training data is given as weighted mixes of named sources
(:func:`parse_mix`): ``{ar_sft: 1, self/greedy: 2}`` lists the self-text rows twice for each teacher row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nla.common.config import load_yaml, make_config, merge, nest, option, section
from nla.common.errors import NLAError
from nla.data.extract import ExtractConfig
from nla.evaluate.card import EvalConfig
from nla.export import ExportConfig
from nla.faithfulness.suite import FaithfulnessConfig
from nla.resources import resource
from nla.teach.run import TeachConfig
from nla.train.ar import ARTrainConfig
from nla.train.av import AVTrainConfig
from nla.train.rl.trainer import RLConfig
from nla.verbalize import VerbalizeConfig

_PATH = "the pipeline fills in the paths that connect the stages"
_SIDECAR = "the trainers read it from the data's sidecar: set the top-level layer"
PRESET_ALIASES = {"cpu-smollm2": "smollm2"}


def _managed(paths: str, shared: str = "", **other: str) -> dict[str, str]:
    """The fields of a stage config the pipeline fills in, with the reason a user may not set them."""
    out = dict.fromkeys(paths.split(), _PATH)
    out.update({name: f"it is the top-level option {name}" for name in shared.split()})
    return {**out, **other}


def _trainer(paths: str, **other: str) -> dict[str, str]:
    return _managed(paths, "model seed bf16 save_every keep_last", layer=_SIDECAR, **other)


def _verbalizer(**other: str) -> dict[str, str]:
    return _managed("av data split out", "seed", device="the pipeline uses cuda when available, else cpu", **other)


_DATA = "the stage's data is its mix (mix.<stage>)"
_OWN_NLA = "the run checks its own NLA, not a shipped one"


@dataclass
class CorporaConfig:
    """The supplementary corpora (:mod:`nla.data.supplementary`), built offline, extracted (av_sft and ar_sft
    splits only: the held-out rows stay the main corpus's) and explained beside the main corpus."""

    locale: list[str] = option([], "Languages of the `locale` corpus (passages from installed translations).")
    per_language: int = option(40, "Passages per language of the `locale` corpus.")
    topic_chats: int = option(0, "Chats of the `topics` corpus (prompts spread over the topic taxonomy); 0 = none.")
    topic_prose: bool = option(False, "Also the `topic_prose` corpus: the topics chats' answers as plain documents.")
    scene_chats: int = option(0, "Chats of the `scenes` corpus (plain narrative about ordinary places); 0 = none.")
    lexicon_chats: int = option(
        0, "Chats of the `lexicon` corpus (everyday nouns drawn from WordNet by rules, no hand list); 0 = none."
    )
    lexicon_prose: bool = option(False, "Also the `lexicon_prose` corpus: the lexicon chats' answers as documents.")
    positions: dict[str, int] = option(
        {}, "Positions per document of some supplementary corpora by name (e.g. lexicon: 2, for breadth: every chat "
        "once among the taught rows); absent = extract.positions_per_doc."
    )  # fmt: skip
    max_new_tokens: int = option(96, "Answer length cap of the topics and lexicon chats.")
    scene_max_new_tokens: int = option(128, "Answer length cap of the scenes chats.")
    copy_from: str = option(
        "", "The corpora/ folder of another run: its frozen corpora are copied in and pinned to the sha256 it "
        "recorded, so that this run extracts the same vectors on another machine."
    )  # fmt: skip
    pin: dict[str, str] = option(
        {}, "Expected sha256 of corpora by name (main, locale, topics, ...): a rebuild that differs "
        "is an error instead of silently other vectors (the hashes of a run are in corpora/corpora.json)."
    )  # fmt: skip

    def chats(self, name: str) -> int:
        """How many chats the supplementary corpus ``name`` asks the target for (0: it is not a chat corpus)."""
        return {"topics": self.topic_chats, "scenes": self.scene_chats, "lexicon": self.lexicon_chats}.get(name, 0)

    def wanted(self) -> list[str]:
        """The supplementary corpora this config builds, in build order."""
        out = ["locale"] if self.locale else []
        out += ["topics"] if self.chats("topics") > 0 else []
        out += ["topic_prose"] if self.chats("topics") > 0 and self.topic_prose else []
        out += ["scenes"] if self.chats("scenes") > 0 else []
        out += ["lexicon"] if self.chats("lexicon") > 0 else []
        return out + (["lexicon_prose"] if self.chats("lexicon") > 0 and self.lexicon_prose else [])


@dataclass
class MixConfig:
    """Weighted training mixes. A source is a split the teacher explained (``av_sft``, ``ar_sft``, ``rl`` of the
    main corpus; ``locale/av_sft``, ``scenes/ar_sft``, ... of a supplementary corpus), a text the pipeline's AV
    wrote (``self/greedy``, ``self/sampled``, ``expert/best``), or a parquet path. A weight is how many times
    the source's rows are listed (a whole number; 0 drops it); sources of corpora the run does not build are
    left out."""

    ar_sft: dict[str, float] = option({"ar_sft": 1}, "AR-SFT's data (a flag: SOURCE=WEIGHT,...).")
    av_sft: dict[str, float] = option({"av_sft": 1}, "AV-SFT's data (a flag: SOURCE=WEIGHT,...).")
    expert: dict[str, float] = option(
        {"expert/best": 1, "av_sft": 1}, "Expert iteration's AV data (a flag: SOURCE=WEIGHT,...)."
    )
    selftext: dict[str, float] = option(
        {"self/greedy": 2, "self/sampled": 2, "ar_sft": 1}, "The self-text refit's AR data (a flag: SOURCE=WEIGHT,...)."
    )


@dataclass
class ExpertConfig:
    """Expert iteration (optional; rows 0 = off): the AV writes best_of answers for rows of the rl split, the AR
    keeps the one it reconstructs best, and the AV's adapter is fine-tuned on mix.expert."""

    rows: int = option(0, "rl rows the AV explains best-of-K (0 = no expert iteration).")
    every: int = option(8, "Take every n-th rl row (spread over documents: a few documents' themes become fillers).")
    best_of: int = option(4, "Answers per row: the greedy one and K-1 samples; the current AR keeps one.")
    temperature: float = option(0.7, "Temperature of the samples.")
    verbalize: VerbalizeConfig = section(
        VerbalizeConfig, "The best-of-K answers (nla verbalize --best-of; its `ar` is the pipeline's current AR).",
        managed=_verbalizer(ar=_PATH, limit="it is expert.rows", every="it is expert.every",
                            best_of="it is expert.best_of", temperature="it is expert.temperature"),
        max_new_tokens=144, batch_size=16, chunk_size=32,
    )  # fmt: skip
    av: AVTrainConfig = section(
        AVTrainConfig, "The AV fine-tuned on its chosen answers (nla train av --init).",
        managed=_trainer("out_dir data init eval_data"),
        max_steps=66, batch_size=16, lr=2e-4, warmup_steps=5, max_response_tokens=160, eval_every=0, samples=0,
    )  # fmt: skip


@dataclass
class SelfTextConfig:
    """The self-text refit (greedy_rows 0 = off): the AV explains ar_sft rows (greedy, and some sampled), then
    the AR trains on mix.selftext once per entry of the schedule, each repeat starting from the last."""

    greedy_rows: int = option(0, "ar_sft rows the AV explains greedily (0 = no self-text refit).")
    greedy_every: int = option(1, "Take every n-th ar_sft row for the greedy text.")
    sampled_rows: int = option(0, "ar_sft rows the AV explains by sampling.")
    sampled_every: int = option(4, "Take every n-th ar_sft row for the sampled text.")
    temperature: float = option(0.7, "Temperature of the sampled text.")
    schedule: list[str] = option(
        ["400@1e-4"], "The AR repeats, one entry each as STEPS@LR, or NxSTEPS@LR for N equal repeats."
    )
    verbalize: VerbalizeConfig = section(
        VerbalizeConfig, "The AV's text (nla verbalize).",
        managed=_verbalizer(limit=_PATH, every=_PATH, do_sample=_PATH, temperature=_PATH),
        max_new_tokens=144, batch_size=16, chunk_size=32,
    )  # fmt: skip
    ar: ARTrainConfig = section(
        ARTrainConfig, "Each repeat of the AR (nla train ar --init); steps and lr come from the schedule.",
        managed=_trainer("out_dir data init eval_data baseline_data", max_steps="it comes from the schedule",
                         lr="it comes from the schedule"),
        batch_size=16, warmup_steps=10, save_adapter_only=True, eval_every=0, eval_max_rows=512,
    )  # fmt: skip


@dataclass
class FaithStageConfig:
    """The faithfulness report(s) of the final NLA (nla faithfulness), one per decoding in best_of."""

    best_of: list[int] = option([1], "One report per value: 1 = greedy, K = best of K by the AR. Empty = no report.")
    suite: FaithfulnessConfig = section(
        FaithfulnessConfig, "The suite's options (nla faithfulness).",
        managed=_managed(
            "av ar data train_data lookup_data out", "seed", best_of="it is faithfulness.best_of", model=_OWN_NLA
        ),
    )  # fmt: skip


@dataclass
class PipelineConfig:
    """Options of ``nla train pipeline``: a few shared ones, then each stage's own config as a section."""

    run_dir: str = option("runs/pipeline", "Run directory: one sub-directory per stage.")
    model: str = option("smollm2-135m", "Target model: embedded name, HF id or local HF directory.")
    layer: int | None = option(None, "Layer L; default round(2/3 n_layers).")
    seed: int = option(0, "Seed of every stage.")
    bf16: str = option("auto", "bf16 autocast in the training stages.", choices=["auto", "true", "false"])
    save_every: int = option(25, "Checkpoint every this many steps in the training stages.")
    keep_last: int = option(1, "Checkpoints the training stages keep while they run: the last N as checkpoint-<step>/.")
    threads: int = option(0, "torch threads of every stage (0 = leave as set, e.g. by OMP_NUM_THREADS).")
    held_out_rows: int = option(
        64, "Rows of the eval split the teacher explains (teach/eval.parquet): the held-out pool of every evaluation."
    )
    teach_rows: dict[str, int] = option(
        {}, "Rows the teacher explains per source (e.g. {ar_sft: 2000, locale/ar_sft: 600}); absent or 0 = all."
    )
    corpora: CorporaConfig = section(CorporaConfig, "The supplementary corpora (nla corpus build).")
    extract: ExtractConfig = section(
        ExtractConfig, "Activations of the target (nla extract), from the corpora frozen by the corpora stage.",
        managed=_managed("out", "model layer seed"), positions_per_doc=8,
    )  # fmt: skip
    teach: TeachConfig = section(
        TeachConfig,
        "Teacher explanations of every source a mix names and of held_out_rows eval rows (nla teach; teach.model "
        "is the teacher's model).",
        managed=_managed("data out split limit", "seed"),
    )
    mix: MixConfig = section(MixConfig, "The weighted data mixes of the training stages.")
    ar_sft: ARTrainConfig = section(
        ARTrainConfig, "The AR trained on teacher text (nla train ar).",
        managed=_trainer("out_dir data eval_data baseline_data", init=_PATH),
        max_steps=200, batch_size=8, lr=5e-5, eval_every=0,
    )  # fmt: skip
    av_sft: AVTrainConfig = section(
        AVTrainConfig, "The AV trained on teacher text (nla train av).",
        managed=_trainer("out_dir data eval_data", init=_PATH), max_steps=200, batch_size=8, lr=2e-5, eval_every=0,
    )  # fmt: skip
    rl: RLConfig = section(
        RLConfig, "Joint GRPO of the AV and AR (nla train rl); off with run_rl: false.",
        managed=_managed("av ar data split eval_data out_dir", "seed bf16 save_every keep_last"),
        steps=60, prompts_per_step=4, max_new_tokens=100,
    )  # fmt: skip
    run_rl: bool = option(True, "Run the rl stage (false: skip it; the SFT pair goes on to the next stage).")
    expert: ExpertConfig = section(ExpertConfig, "Expert iteration (off unless expert.rows > 0).")
    selftext: SelfTextConfig = section(SelfTextConfig, "The self-text refit of the AR (off unless greedy_rows > 0).")
    card: EvalConfig = section(
        EvalConfig, "The evaluation card (nla eval) of every stage's pair on the same held-out rows.",
        managed=_managed("av ar sft_av sft_ar data train_data lookup_data out compute stage", "seed", model=_OWN_NLA),
    )  # fmt: skip
    keep_shipped_rows: bool = option(
        False,
        "Keep the card rows of the NLA the package ships for this model on the card for comparison, when that "
        "card was scored on the same held-out rows (same corpus, extraction and B); else a warning and a card "
        "without them.",
    )
    keep_checkpoints: bool = option(
        False,
        "Keep a finished stage's resume checkpoints (checkpoint/ folders: trainable weights, optimizer "
        "state, RNG); by default they are deleted once the stage's DONE marker is written (2/3 of a run's disk).",
    )
    faithfulness: FaithStageConfig = section(FaithStageConfig, "The faithfulness report(s) of the final NLA.")
    export: ExportConfig = section(
        ExportConfig,
        "How the final pair ships (nla export): adapters are cast to dtype, full checkpoints exported.",
        managed=_managed("av ar out"),
    )


def parse_mix(value: Any, what: str) -> dict[str, int]:
    """``{source: weight}`` (or ``"a=2,b=1"`` from a flag) as whole repeat counts; zero weights dropped."""
    if isinstance(value, str):
        pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise NLAError(f"{what}: expected SOURCE=WEIGHT,... got {value!r}")
        value = {k.strip(): v for k, v in pairs}
    if not isinstance(value, dict) or not value:
        raise NLAError(f"{what} must be a non-empty mapping of source: weight, got {value!r}")
    out: dict[str, int] = {}
    for name, weight in value.items():
        try:
            w = float(weight)
        except (TypeError, ValueError):
            raise NLAError(f"{what}: weight of {name} must be a number, got {weight!r}") from None
        if w < 0 or w != int(w):
            raise NLAError(f"{what}: weight of {name} must be a whole number >= 0 (times its rows are listed), got {w}")
        if w > 0:
            out[str(name)] = int(w)
    if not out:
        raise NLAError(f"{what}: every weight is 0")
    return out


def parse_schedule(entries: list[str]) -> list[tuple[int, float]]:
    """``["2x400@1e-4", "300@2e-4"]`` -> ``[(400, 1e-4), (400, 1e-4), (300, 2e-4)]``."""
    out: list[tuple[int, float]] = []
    for entry in entries:
        text = str(entry).replace(" ", "")
        times, _, rest = text.rpartition("x") if "x" in text.split("@")[0] else ("1", "", text)
        steps, sep, lr = rest.partition("@")
        try:
            n, s, r = int(times), int(steps), float(lr)
        except ValueError:
            raise NLAError(f"selftext.schedule: expected STEPS@LR or NxSTEPS@LR, got {entry!r}") from None
        if not sep or n < 1 or s < 1 or r <= 0:
            raise NLAError(f"selftext.schedule: expected STEPS@LR or NxSTEPS@LR with positive numbers, got {entry!r}")
        out += [(s, r)] * n
    return out


def preset_names() -> list[str]:
    folder = resource("presets")
    return sorted([p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")] + list(PRESET_ALIASES))


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A preset's option mapping: a bundled name (``smollm2``, ``gpu``, ``tiny``) or a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return _with_base(dict(load_yaml(path)), [str(path)])
    res = resource("presets", f"{PRESET_ALIASES.get(name_or_path, name_or_path)}.yaml")
    if not res.is_file():
        raise NLAError(
            f"unknown preset {name_or_path!r}; bundled presets: {', '.join(preset_names())} (or a .yaml path)"
        )
    return _with_base(dict(yaml.safe_load(res.read_text(encoding="utf-8")) or {}), [name_or_path])


def _with_base(data: dict[str, Any], chain: list[str]) -> dict[str, Any]:
    """A preset that says ``extends: NAME`` is that bundled preset with its own options merged over it, key by
    key inside sections (so a second model's preset states only what differs)."""
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or base in chain:
        raise NLAError(f"preset {chain[-1]!r}: extends must name another bundled preset, got {base!r}")
    res = resource("presets", f"{PRESET_ALIASES.get(base, base)}.yaml")
    if not res.is_file():
        raise NLAError(f"preset {chain[-1]!r} extends unknown preset {base!r}; bundled: {', '.join(preset_names())}")
    parent = _with_base(dict(yaml.safe_load(res.read_text(encoding="utf-8")) or {}), [*chain, base])
    return merge(parent, data)


def load_pipeline_config(
    preset: str | None = None, config: str | Path | None = None, **overrides: Any
) -> PipelineConfig:
    """Defaults < preset < YAML ``config`` < ``overrides``, merged key by key inside sections; unknown keys
    are an error. ``overrides`` are options by name: ``seed=1``, ``rl={"kl_coef": 0.02}`` or, as the CLI
    passes them, dotted ``**{"rl.kl_coef": 0.02}``."""
    values: dict[str, Any] = load_preset(preset) if preset else {}
    if config:
        values = merge(values, load_yaml(Path(config)))
    values = merge(values, _mappings_from_flags(nest(overrides)))
    cfg = make_config(PipelineConfig, values, source=f"preset {preset}" if preset else "pipeline config")
    check_config(cfg)
    return cfg


MAIN_SPLITS = ("av_sft", "ar_sft", "rl")
SUPPLEMENTARY_SPLITS = ("av_sft", "ar_sft")
GENERATED = {"self/greedy": "selftext", "self/sampled": "selftext", "expert/best": "expert"}


def source_kind(name: str) -> str:
    """``teacher`` (a split the teacher explains), ``generated`` (text the pipeline's AV writes) or ``file``."""
    from nla.data.supplementary import SUPPLEMENTARY

    if name in GENERATED:
        return "generated"
    if name.endswith(".parquet"):
        return "file"
    corpus, _, split = name.rpartition("/")
    if (not corpus and split in MAIN_SPLITS) or (corpus in SUPPLEMENTARY and split in SUPPLEMENTARY_SPLITS):
        return "teacher"
    raise NLAError(
        f"unknown data source {name!r}: expected one of {', '.join(MAIN_SPLITS)}, <corpus>/av_sft or "
        f"<corpus>/ar_sft (corpus: {', '.join(SUPPLEMENTARY)}), {', '.join(GENERATED)}, or a .parquet path"
    )


def _pairs(value: Any, what: str) -> dict[str, str]:
    """A mapping given in YAML, or ``"a=1,b=2"`` from a flag."""
    if isinstance(value, str):
        pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise NLAError(f"{what}: expected NAME=VALUE,... got {value!r}")
        return {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, dict):
        raise NLAError(f"{what} must be a mapping, got {value!r}")
    return value


_MAPPINGS = ("teach_rows", "mix.ar_sft", "mix.av_sft", "mix.expert", "mix.selftext", "corpora.pin")


def _mappings_from_flags(values: dict[str, Any]) -> dict[str, Any]:
    """Mapping options given as flags (``--mix.ar-sft a=1,b=2``) as mappings, so that they merge key by key over
    the preset as YAML does (a weight of 0 drops a source)."""
    for dotted in _MAPPINGS:
        *parents, leaf = dotted.split(".")
        node = values
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(leaf), str):
            node[leaf] = _pairs(node[leaf], dotted)
    return values


def check_config(cfg: PipelineConfig) -> None:
    """The checks a config needs before any stage starts (one clear error, nothing written); mappings given
    as flags (``a=1,b=2``) become mappings."""
    for name in ("ar_sft", "av_sft", "expert", "selftext"):
        mix = parse_mix(getattr(cfg.mix, name), f"mix.{name}")
        for source in mix:
            source_kind(source)
        setattr(cfg.mix, name, mix)
    rows = _pairs(cfg.teach_rows, "teach_rows")
    for source, n in rows.items():
        source_kind(source)
        if not str(n).isdigit():
            raise NLAError(f"teach_rows: {source} must be a whole number of rows, got {n!r}")
    cfg.teach_rows = {k: int(v) for k, v in rows.items()}
    cfg.corpora.pin = {k: str(v) for k, v in _pairs(cfg.corpora.pin, "corpora.pin").items()}
    parse_schedule(cfg.selftext.schedule)
    if any(k < 1 for k in cfg.faithfulness.best_of):
        raise NLAError("faithfulness.best_of values must be >= 1")
