"""``nla faithfulness``: run every check on one NLA and write the report (terminal summary, JSON, HTML).

:func:`run_faithfulness` loads the NLA (default: the one shipped with the package), builds the concept
directions, and runs the planted-direction, topic-recall and held-out-row sections
(:mod:`nla.faithfulness.planting`, :mod:`nla.faithfulness.heldout`). :func:`evaluate` is the same on
given parts (a :class:`Subject`), which is how the tests run it with verbalizers whose truth is known.

Explanations are written once each, in batches, behind one progress bar, and appended to
``<out>/work/explanations.jsonl`` keyed by the explained vector and the decoding options: a run killed
part-way resumes from there without writing any explanation twice.

    nla faithfulness --data runs/teach/eval.parquet --train-data runs/teach/ar_sft.parquet --out faithfulness/
    nla faithfulness --quick                                     # a reduced run, about 2 minutes on a CPU
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from nla.common.config import option
from nla.common.errors import NLAError
from nla.core.metrics import mean_baseline
from nla.core.text import DEFAULT_MIN_SUPPORT, MIN_SUPPORT_HELP, filtering_support, text_for_ar
from nla.data.activations import VectorSet, load_vectors
from nla.evaluate.lookup import table_rows
from nla.faithfulness.breakdown import balanced_rows, setting_of, token_type
from nla.faithfulness.concepts import SPLITS, ConceptSet, load_concepts
from nla.faithfulness.directions import POOLS, Context, activations, build_directions, render
from nla.faithfulness.heldout import heldout_rows
from nla.faithfulness.planting import Explain, Reconstruct, planting, topic_recall
from nla.faithfulness.splits import split_stats
from nla.models.target import Target, shipped_model

log = logging.getLogger(__name__)

QUICK_CONCEPTS = ["cooking", "french", "anger", "archery", "dentistry"]  # covered and novel
ALPHAS = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]


@dataclass
class FaithfulnessConfig:
    """Options of ``nla faithfulness``."""

    model: str = option("", "Embedded model whose shipped NLA to check when --av is not given (default: smollm2-135m).")
    av: str = option("", "AV checkpoint (default: the NLA shipped with the package for --model).")
    ar: str = option("", "AR checkpoint (default: the shipped one, or none with --av).")
    concepts: str = option("", "Concept file, YAML or JSONL (prompts + keywords); default: the shipped set.")
    only: list[str] = option([], "Only these concepts of the set (names).")
    splits: list[str] = option(
        list(SPLITS),
        "Splits of the shipped set (not --concepts): covered (the teacher's taxonomy names them), novel (no "
        "training resource does); reported apart.",
    )
    data: str = option(
        "", "Held-out activations with context texts (teacher eval parquet or extract dir): perturbations, claims."
    )
    split: str = option("eval", "Split of --data when it is an `nla extract` directory.")
    train_data: str = option("", "Training activations with context texts: B and the token-lookup tables.")
    train_split: str = option("ar_sft", "Split of --train-data when it is an `nla extract` directory.")
    lookup_data: str = option(
        "", "Training rows for the token-lookup tables (default: --train-data); an extract dir: all training splits."
    )
    rows: int = option(64, "Held-out rows of --data to explain (spread over the file, every setting represented).")
    teacher: bool = option(True, "Also perturb the teacher explanations of --data (a reference; AR only).")
    alphas: list[float] = option(ALPHAS, "Planting strengths alpha (v + alpha |v| unit(d)).")
    bases: int = option(20, "Held-out neutral texts explained unplanted (the false-positive rate).")
    planted_bases: int = option(5, "How many of those bases every direction is planted into, at every alpha.")
    topic_texts: int = option(5, "Held-out on-topic texts per concept explained for topic recall.")
    pool: str = option("mean", "How a prompt's activation is pooled for the directions.", choices=list(POOLS))
    min_auc: float = option(0.9, "Directions whose held-out probe AUC is below this are reported and skipped.")
    best_of: int = option(1, "Decoding: 1 = greedy; K > 1 = best of the greedy answer and K-1 samples, by the AR.")
    temperature: float = option(0.7, "Temperature of the --best-of samples.")
    min_support: int = option(DEFAULT_MIN_SUPPORT, MIN_SUPPORT_HELP)
    max_new_tokens: int = option(120, "Cap of each explanation (tokens).")
    distinct_items: bool = option(
        False,
        "Decode with the distinct-items rule (no repeated salient word or next token; opt-in: it raised greedy "
        "hits and false positives alike, docs/faithfulness.md).",
    )
    batch_size: int = option(32, "Generation / AR batch size.")
    seed: int = option(0, "Seed of perturbations, permutation floors and samples.")
    quick: bool = option(
        False, "A reduced run (5 concepts, alphas 0/1/2, few texts and rows; too few bases to judge a check)."
    )
    plots: bool = option(True, "Draw plots in the HTML page (needs matplotlib: pip install 'nla[faithfulness]').")
    out: str = option("faithfulness", "Report folder (report.json, report.html, work/ with the resume cache).")


def command_line(cfg: FaithfulnessConfig) -> str:
    """The ``nla faithfulness`` command that gives ``cfg`` (options that differ from the defaults)."""
    default, parts = FaithfulnessConfig(), ["nla", "faithfulness"]
    for name, value in asdict(cfg).items():
        if value == getattr(default, name):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"{flag} false")
        elif isinstance(value, list):
            parts += [flag, *(shlex.quote(f"{v:g}" if isinstance(v, float) else str(v)) for v in value)]
        else:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


def quick_config(cfg: FaithfulnessConfig) -> FaithfulnessConfig:
    """``--quick``: the reduced sizes, keeping whatever else was asked."""
    return FaithfulnessConfig(
        **{
            **asdict(cfg),
            "only": cfg.only or QUICK_CONCEPTS,
            "alphas": [0.0, 1.0, 2.0],
            "bases": 4,
            "planted_bases": 2,
            "topic_texts": 2,
            "rows": min(cfg.rows, 8),
            "teacher": False,
            "quick": True,
        }
    )


@dataclass
class Subject:
    """What the suite measures: the target (activations, next-token truth), how vectors are explained and
    how explanations are read back. ``explain`` gets (N, d) and returns N raw answers."""

    target: Target
    layer: int
    explain: Explain
    reconstruct: Reconstruct | None
    baseline: float | None
    name: str = "nla"
    decoding: str = "greedy"


# ----------------------------------------------------------------------------------------- resume cache


class CachedExplainer:
    """Wraps an explainer: batches, a progress bar, and an append-only JSONL cache keyed by vector + options."""

    def __init__(self, fn: Explain, cache: Path | None, options: str, batch_size: int, progress: Any = None) -> None:
        self.fn, self.cache, self.options, self.batch_size, self.progress = fn, cache, options, batch_size, progress
        self.done: dict[str, str] = {}
        self.generated = self.reused = 0
        if cache is not None and cache.exists():
            for line in cache.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: that explanation is written again
                    continue
                self.done[rec["key"]] = rec["answer"]

    def key(self, v: torch.Tensor) -> str:  # (d,)
        q = torch.round(v.float() * 100).to(torch.int64).numpy().tobytes()
        return hashlib.sha256(self.options.encode() + q).hexdigest()[:24]

    def __call__(self, vectors: torch.Tensor) -> list[str]:  # (N, d)
        keys = [self.key(v) for v in vectors]
        firsts: dict[str, int] = {}
        for i, k in enumerate(keys):
            firsts.setdefault(k, i)
        todo = [k for k in firsts if k not in self.done]
        self.reused += len(firsts) - len(todo)
        if self.progress is not None:
            self.progress.update(len(keys) - len(todo))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            answers = self.fn(vectors[[firsts[k] for k in chunk]])
            self.generated += len(chunk)
            lines = []
            for k, a in zip(chunk, answers, strict=True):
                self.done[k] = a
                lines.append(json.dumps({"key": k, "answer": a}, ensure_ascii=False) + "\n")
            if self.cache is not None:
                with self.cache.open("a", encoding="utf-8") as f:
                    f.writelines(lines)
                    f.flush()
            if self.progress is not None:
                self.progress.update(len(chunk))
        return [self.done[k] for k in keys]


# ----------------------------------------------------------------------------------------- the run


def _alternate(items: list[str], n: int) -> list[tuple[str, str]]:
    """The first ``n`` items, rendered alternately as prose and as a chat's user turn."""
    return [(p, "prose" if i % 2 == 0 else "chat") for i, p in enumerate(items[:n])]


def evaluate(
    subject: Subject,
    concepts: ConceptSet,
    cfg: FaithfulnessConfig,
    *,
    rows: VectorSet | None = None,
    train: VectorSet | None = None,
) -> dict[str, Any]:
    """Every section on ``subject`` (directions, planting, topic recall, held-out rows when given);
    ``train`` fills the token-lookup tables."""
    t = subject.target
    tok = t.tokenizer
    if cfg.bases < 1 or cfg.planted_bases < 1 or cfg.topic_texts < 1:
        raise NLAError("--bases, --planted-bases and --topic-texts must be >= 1")

    def acts(contexts: list[Context], pool: str) -> torch.Tensor:
        return activations(t, subject.layer, contexts, pool=pool, batch_size=cfg.batch_size)

    prose = lambda ps: [render(tok, p) for p in ps]  # noqa: E731
    neutral = (acts(prose(concepts.neutral), cfg.pool), acts(prose(concepts.neutral_heldout), cfg.pool))
    on_topic = {c.name: (acts(prose(c.prompts), cfg.pool), acts(prose(c.heldout), cfg.pool)) for c in concepts.concepts}
    directions = build_directions(on_topic, neutral, min_auc=cfg.min_auc)
    base_ctx = [render(tok, p, s) for p, s in _alternate(list(concepts.neutral_heldout), cfg.bases)]
    topic = [
        (c.name, render(tok, p, s)) for c in concepts.concepts for p, s in _alternate(list(c.heldout), cfg.topic_texts)
    ]

    def groups(ctxs: list[Context]) -> dict[str, list[str]]:
        return {"setting": [c.setting for c in ctxs], "token type": [token_type(tok, c.ids) for c in ctxs]}

    report: dict[str, Any] = {
        "directions": [
            {"concept": d.concept, "auc": d.auc, "norm": float(d.vector.norm()), "valid": d.valid} for d in directions
        ],
        "pool": cfg.pool,
        "min_auc": cfg.min_auc,
    }
    log.info("planting %d valid directions into %d bases", sum(d.valid for d in directions), len(base_ctx))
    report["planting"] = planting(
        concepts,
        directions,
        acts(base_ctx, "last"),
        groups(base_ctx),
        alphas=cfg.alphas,
        planted_bases=cfg.planted_bases,
        explain=subject.explain,
        reconstruct=subject.reconstruct,
    )
    report["planting"]["base_texts"] = [c.text[-120:] for c in base_ctx]
    topic_ctx = [c for _, c in topic]
    report["topic_recall"] = topic_recall(
        concepts, acts(topic_ctx, "last"), [n for n, _ in topic], groups(topic_ctx), explain=subject.explain
    )
    report["splits"] = {c.name: c.split for c in concepts.concepts}
    report["by_split"] = split_stats(report["planting"], report["topic_recall"], report["splits"])
    if rows is not None and subject.reconstruct is not None:
        report["heldout"] = heldout_rows(
            rows,
            t,
            explain=subject.explain,
            reconstruct=subject.reconstruct,
            baseline=subject.baseline,
            train=train,
            teacher=cfg.teacher,
            seed=cfg.seed,
        )
    else:
        why = "no AR to read the explanations back" if subject.reconstruct is None else "no --data given"
        report["heldout"] = {
            "skipped": f"perturbations, claims and the token-lookup control need held-out rows ({why})"
        }
    return report


def planned_explanations(concepts: ConceptSet, cfg: FaithfulnessConfig, n_rows: int) -> int:
    """How many explanations :func:`evaluate` asks for (upper bound: directions that fail AUC are skipped)."""
    k = len(concepts.concepts)
    nonzero = sum(1 for a in cfg.alphas if float(a) != 0.0)
    bases = min(cfg.bases, len(concepts.neutral_heldout))
    topic = sum(min(cfg.topic_texts, len(c.heldout)) for c in concepts.concepts)
    return bases + k * nonzero * min(cfg.planted_bases, bases) + k + topic + n_rows


def _package_path(folder: Path) -> str:
    """``nla/resources/...`` for a folder inside the installed package, else the folder as given."""
    package = Path(__file__).resolve().parents[1]
    folder = folder.resolve()
    return f"nla/{folder.relative_to(package).as_posix()}" if folder.is_relative_to(package) else str(folder)


def run_faithfulness(cfg: FaithfulnessConfig, *, command: str = "") -> dict[str, Any]:
    """Load the NLA and the data, run :func:`evaluate`, write ``report.json`` and ``report.html`` to ``cfg.out``."""
    from tqdm.auto import tqdm

    from nla.explain.api import NLA, resolve_nla_paths
    from nla.faithfulness.page import write_report

    if cfg.quick:
        cfg = quick_config(cfg)
    if cfg.best_of < 1 or cfg.max_new_tokens < 1 or cfg.batch_size < 1 or cfg.rows < 0:
        raise NLAError("--best-of, --max-new-tokens and --batch-size must be >= 1, --rows >= 0")
    if cfg.model and cfg.av:
        raise NLAError("--model picks the NLA shipped for that model: give it or --av, not both")
    model = shipped_model(cfg.model) if cfg.model else None
    av, ar = resolve_nla_paths(cfg.av or None, cfg.ar or None, model)  # before the long work
    shipped = _package_path(Path(av).parent)  # for the report: which shipped NLA, when no --av
    started = time.time()
    concepts = load_concepts(cfg.concepts) if cfg.concepts else load_concepts(splits=cfg.splits)
    concepts = concepts.subset(cfg.only or None)
    rows = train = None
    if cfg.data and cfg.rows > 0:
        held = load_vectors(cfg.data, cfg.split)
        if held.contexts is None:
            raise NLAError(f"{cfg.data} has no detokenized_text_truncated column: held-out rows need their context")
        pick = balanced_rows([setting_of(c) for c in held.contexts], cfg.rows)
        rows = VectorSet(
            held.vectors[pick],
            [held.doc_ids[i] for i in pick],
            [held.contexts[i] for i in pick],
            [held.explanations[i] for i in pick] if held.explanations else None,
        )
    if cfg.train_data:
        train = load_vectors(cfg.train_data, cfg.train_split)
    table = table_rows(cfg.lookup_data) if cfg.lookup_data else train
    nla = NLA.from_pretrained(av, ar)
    nla.av.distinct_items = cfg.distinct_items
    baseline = mean_baseline(train.vectors) if train is not None else nla.baseline
    baseline_source = (
        f"mean of the normalised vectors of {cfg.train_data}"
        if train is not None
        else ("the AR sidecar (eval.baseline_mse)" if baseline is not None else "unknown")
    )
    decoding = "greedy" if cfg.best_of == 1 else f"best-of-{cfg.best_of} (T={cfg.temperature:g}, chosen by the AR)"
    support = filtering_support(cfg.best_of, cfg.min_support)
    if support > 1:
        decoding += f"; only topics and salient words that {support} of the {cfg.best_of} answers name"
    if cfg.distinct_items:
        decoding += "; distinct list items"
    out = Path(cfg.out)
    (out / "work").mkdir(parents=True, exist_ok=True)
    key = cfg.av or (f"shipped {model}" if model else "shipped")  # the default NLA's key as before --model
    options = f"{key}|{cfg.best_of}|{cfg.temperature}|{cfg.max_new_tokens}|{cfg.seed}"
    if support > 1:  # the cache key of best-of runs made before min_support stays
        options += f"|support {support}"
    if cfg.distinct_items:
        options += "|distinct items"

    def generate(vectors: torch.Tensor) -> list[str]:  # (N, d) -> N raw answers
        if cfg.best_of == 1:
            return [
                a[0] for a in nla.av.generate(vectors, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
            ]
        recs = nla.explain_vectors(
            vectors,
            best_of=cfg.best_of,
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            min_support=cfg.min_support,
        )
        return [r.raw for r in recs]

    def reconstruct(texts: list[str]) -> torch.Tensor:
        assert nla.ar is not None
        return nla.ar.predict([text_for_ar(x) for x in texts], batch_size=cfg.batch_size).float().cpu()

    total = planned_explanations(concepts, cfg, 0 if rows is None else rows.vectors.shape[0])
    with tqdm(total=total, desc="faithfulness: explanations", unit="expl", dynamic_ncols=True) as bar:
        explainer = CachedExplainer(generate, out / "work" / "explanations.jsonl", options, cfg.batch_size, bar)
        subject = Subject(
            nla.target, nla.layer, explainer, reconstruct if nla.ar is not None else None, baseline, decoding=decoding
        )
        report = evaluate(subject, concepts, cfg, rows=rows, train=table)
        bar.total = bar.n  # AUC-skipped directions made the plan an upper bound
        bar.refresh()
    report["meta"] = {
        "av": cfg.av or f"shipped ({shipped}/av)",
        "ar": cfg.ar or (f"shipped ({shipped}/ar)" if not cfg.av and ar else ""),
        "target": nla.target.name,
        "layer": nla.layer,
        "decoding": decoding,
        "max_new_tokens": cfg.max_new_tokens,
        "baseline": baseline,
        "baseline_source": baseline_source,
        "concepts": concepts.source,
        "data": cfg.data,
        "train_data": cfg.train_data,
        "lookup_data": cfg.lookup_data or cfg.train_data,
        "quick": cfg.quick,
        "command": command,
        "runtime_s": round(time.time() - started, 1),
        "explanations_generated": explainer.generated,
        "explanations_from_cache": explainer.reused,
        "torch_threads": torch.get_num_threads(),
        "config": asdict(cfg),
    }
    write_report(report, out, plots=cfg.plots)
    return report


__all__ = [
    "FaithfulnessConfig",
    "Subject",
    "command_line",
    "evaluate",
    "planned_explanations",
    "quick_config",
    "run_faithfulness",
]
