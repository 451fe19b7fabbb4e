"""Round-trip evaluation of an AV + AR pair and the evaluation card (``nla eval``).

Round trip: the AV writes a greedy explanation of each held-out vector, the AR reconstructs the vector
from it, and :func:`nla.evaluate.roundtrip.evaluate_ar` scores the reconstruction (``fve_nrm`` beside the
controls: shuffled vectors, the empty explanation, random Gaussian vectors, the mean predictor; retrieval
top-1 among 8). Beside them sits the token-lookup control (:mod:`nla.evaluate.lookup`: each held-out vector
predicted by the mean training vector of its final token; needs ``--train-data``). :func:`evaluation_card`
puts the stage ladder on one page: AR-SFT on teacher text -> AV-SFT round trip -> after RL (current AR and
frozen SFT AR), plus length / tag-failure stats and examples.

    nla eval --av runs/rl/final/av --ar runs/rl/final/ar --sft-av runs/av/final --sft-ar runs/ar/final \\
        --data runs/teach/eval.parquet --train-data runs/teach/ar_sft.parquet --out card.json
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nla.common.config import option
from nla.common.errors import NLAError
from nla.common.meta import read_model_sidecar
from nla.common.paths import atomic_write_text
from nla.core.text import MIN_SUPPORT_HELP, text_for_ar
from nla.data.activations import VectorSet, load_vectors
from nla.evaluate.lookup import table_rows, token_lookup_control
from nla.evaluate.rerank import DEFAULT_MIN_SUPPORT, DEFAULT_TEMPERATURE
from nla.evaluate.roundtrip import Baseline, evaluate_ar, grounding, round_trip
from nla.models.ar import ActivationReconstructor
from nla.models.av import ActivationVerbalizer
from nla.models.target import DEFAULT_TARGET, load_tokenizer, shipped_model, shipped_nla_folder

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- the card


@dataclass
class EvalConfig:
    """Options of ``nla eval`` (the evaluation card)."""

    model: str = option(
        "",
        "Embedded model whose shipped NLA to show when no checkpoint is given: its card, or with --data its "
        "evaluation (default: smollm2-135m).",
    )
    av: str = option("", "Final AV checkpoint (e.g. runs/rl/final/av).")
    ar: str = option("", "Final AR checkpoint (e.g. runs/rl/final/ar).")
    sft_av: str = option("", "SFT AV checkpoint, for the AV-SFT round trip (optional).")
    sft_ar: str = option("", "SFT AR checkpoint: AR-SFT on teacher text and the frozen-AR score (optional).")
    data: str = option("", "Held-out activations: teacher eval parquet (adds AR-SFT on teacher text) or extract dir.")
    split: str = option("eval", "Split of --data when it is an `nla extract` directory.")
    train_data: str = option("", "Training activations whose normalised mean gives the baseline B (default: --data).")
    train_split: str = option("ar_sft", "Split of --train-data when it is an `nla extract` directory.")
    lookup_data: str = option(
        "",
        "Training rows that fill the token-lookup control (default: --train-data); an `nla extract` "
        "directory gives all its training splits.",
    )
    rows: int = option(64, "Held-out rows to evaluate.")
    max_new_tokens: int = option(150, "Cap of the greedy explanations.")
    batch_size: int = option(16, "Generation / AR batch size.")
    stage: list[str] = option(
        [],
        "Further round-trip stages after RL, in ladder order: NAME=AV_DIR,AR_DIR "
        "(e.g. shipped=nla-small/av,nla-small/ar).",
    )
    examples: int = option(6, "Examples written into the card (spread over different documents).")
    best_of: int = option(
        1,
        "Also score the last stage with best-of-K decoding (greedy + K-1 samples, the AR "
        "keeps the best; nla.evaluate.rerank), and its texts read by the SFT AR too.",
    )
    temperature: float = option(DEFAULT_TEMPERATURE, "Temperature of the --best-of samples.")
    min_support: int = option(DEFAULT_MIN_SUPPORT, MIN_SUPPORT_HELP)
    compute: str = option("", "A YAML/JSON file describing the compute used (copied into the card).")
    earlier: str = option(
        "",
        "An earlier card (JSON) measured on the same held-out rows: its stage rows, and the earlier rows it kept, "
        "are kept beside the new ones for comparison (checked: same rows, baseline and held-out fingerprint or "
        "token-lookup control). LABEL=PATH names its stages 'LABEL <stage>' (e.g. round4=card.json).",
    )
    seed: int = option(0, "Seed of the controls (shuffles, Gaussian vectors, retrieval distractors).")
    out: str = option("", "Write the card as JSON here (optional).")


def require_inputs(cfg: EvalConfig) -> None:
    """A card needs held-out rows and something that reads explanations: an AR, or a stage's AV/AR pair."""
    if not cfg.data or not (cfg.ar or cfg.sft_ar or cfg.stage):
        raise NLAError("nla eval needs --data and at least one AR (--ar, --sft-ar or a --stage NAME=AV,AR)")


def evaluation_card(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate every stage that has a checkpoint on the same held-out rows; return the card."""

    require_inputs(cfg)
    extra = parse_stages(cfg.stage)
    compute = read_compute(cfg.compute) if cfg.compute else None  # fail before the long work, not after
    label, earlier_path = split_earlier(cfg.earlier)
    earlier = read_card(earlier_path) if earlier_path else None
    held = load_vectors(cfg.data, cfg.split)
    vecs = held.vectors[: cfg.rows]
    train_set = load_vectors(cfg.train_data, cfg.train_split) if cfg.train_data else None
    train = train_set.vectors if train_set is not None else held.vectors
    baseline = Baseline.from_train(train)
    card: dict[str, Any] = {
        "data": cfg.data,
        "rows": int(vecs.shape[0]),
        "baseline": baseline.value,
        "baseline_source": f"mean of the normalised vectors of {cfg.train_data or cfg.data}",
        "heldout_fingerprint": fingerprint(vecs),
    }
    contexts = held.contexts[: cfg.rows] if held.contexts else None
    table = table_rows(cfg.lookup_data) if cfg.lookup_data else train_set
    lookup = lookup_controls(cfg, table, vecs, contexts, baseline.value)
    if lookup:
        card["token_lookup"] = lookup
    if earlier is not None:  # before the long work: a card from other rows is refused now, not after
        card["earlier"] = earlier_stages(earlier, card, earlier_path, label=label)
    kw = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed, contexts=contexts)
    texts: dict[str, list[str]] = {}
    sft_ar = ActivationReconstructor.from_pretrained(cfg.sft_ar) if cfg.sft_ar else None
    if sft_ar is not None and held.explanations is not None:
        card["ar_sft_teacher"] = evaluate_ar(sft_ar, held.explanations[: cfg.rows], vecs, baseline, seed=cfg.seed)
        card["ar_sft_teacher"].update(grounding(held.explanations[: cfg.rows], contexts))
        texts["teacher"] = held.explanations[: cfg.rows]
    if cfg.sft_av and sft_ar is not None:
        m, resp = round_trip(ActivationVerbalizer.from_pretrained(cfg.sft_av), sft_ar, vecs, baseline, **kw)
        card["av_sft_round_trip"], texts["av_sft"] = m, resp.texts
    if cfg.av and cfg.ar:
        av = ActivationVerbalizer.from_pretrained(cfg.av)
        m, resp = round_trip(av, ActivationReconstructor.from_pretrained(cfg.ar), vecs, baseline, **kw)
        card["rl_current_ar"], texts["rl"] = m, resp.texts
        if sft_ar is not None:
            card["rl_frozen_sft_ar"] = round_trip(
                av, sft_ar, vecs, baseline, responses=resp, seed=cfg.seed, contexts=contexts
            )[0]
    for name, av_dir, ar_dir in extra:
        m, resp = round_trip(
            ActivationVerbalizer.from_pretrained(av_dir),
            ActivationReconstructor.from_pretrained(ar_dir),
            vecs,
            baseline,
            **kw,
        )
        card[name], texts[name] = m, resp.texts
    stages = [s for s in ("ar_sft_teacher", "av_sft_round_trip", "rl_current_ar") if s in card]
    stages += [name for name, _, _ in extra]
    if cfg.best_of > 1:
        stages.append(_best_of_stage(cfg, card, texts, vecs, baseline, extra, sft_ar, kw))
    ref = card[stages[0]] if stages else {}
    card["controls"] = {
        k: ref[k] for k in ("fve_shuffled", "fve_empty", "fve_random", "fve_mean_predictor") if k in ref
    }
    card["controls"].update({k: v for k, v in lookup.items() if k in LOOKUP_CONTROLS})
    card["ladder"] = {s: card[s]["fve_nrm"] for s in stages}
    fves = list(card["ladder"].values())
    card["ladder"]["each_beats_the_one_before"] = all(b > a for a, b in zip(fves, fves[1:], strict=False))
    card["examples"] = [
        {
            "row": i,
            "doc_id": held.doc_ids[i],
            "context_tail": (held.contexts[i][-200:] if held.contexts else None),
            **{k: v[i] for k, v in texts.items()},
        }
        for i in spread_rows(held.doc_ids[: int(vecs.shape[0])], cfg.examples)
    ]
    if compute is not None:
        card["compute"] = compute
    if cfg.out:
        atomic_write_text(Path(cfg.out), json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    return card


def _best_of_stage(
    cfg: EvalConfig,
    card: dict[str, Any],
    texts: dict[str, list[str]],
    vecs: torch.Tensor,
    baseline: Baseline,
    extra: list[tuple[str, str, str]],
    sft_ar: ActivationReconstructor | None,
    kw: dict[str, Any],
) -> str:
    """Score the last AV/AR stage again with best-of-K decoding; with an SFT AR, read both the greedy
    and the chosen texts with it too (``best_of_transfer``). Returns the new stage's name."""

    pairs = ([("rl_current_ar", cfg.av, cfg.ar)] if cfg.av and cfg.ar else []) + extra
    if not pairs:
        raise NLAError("--best-of needs an AV and AR pair to decode with (--av/--ar or a --stage)")
    base, av_dir, ar_dir = pairs[-1]
    name = f"{base} best-of-{cfg.best_of}"
    m, resp = round_trip(
        ActivationVerbalizer.from_pretrained(av_dir),
        ActivationReconstructor.from_pretrained(ar_dir),
        vecs,
        baseline,
        best_of=cfg.best_of,
        temperature=cfg.temperature,
        min_support=cfg.min_support,
        **kw,
    )
    card[name], texts[name] = m, resp.texts
    if sft_ar is not None:
        greedy = texts["rl" if base == "rl_current_ar" else base]
        card["best_of_transfer"] = {
            "reader": cfg.sft_ar,
            **{
                n: evaluate_ar(sft_ar, [text_for_ar(t) for t in ts], vecs, baseline, seed=cfg.seed)["fve_nrm"]
                for n, ts in ((base, greedy), (name, resp.texts))
            },
        }
    return name


LOOKUP_CONTROLS = ("fve_token_lookup", "fve_token_lookup_2")


def lookup_controls(
    cfg: EvalConfig, train: VectorSet | None, held: torch.Tensor, contexts: list[str] | None, baseline: float
) -> dict[str, float]:
    """The token-lookup control (:mod:`nla.evaluate.lookup`) when training rows with context texts are given
    (``--lookup-data`` or ``--train-data``); empty otherwise (a table filled from the held-out rows would leak)."""
    if train is None or train.contexts is None or contexts is None:
        log.info("token-lookup control skipped: it needs --train-data and context texts in both files")
        return {}
    checkpoint = cfg.sft_ar or cfg.ar or cfg.av or cfg.sft_av or parse_stages(cfg.stage)[0][2]
    base_model = (read_model_sidecar(Path(checkpoint)).get("extraction") or {}).get("base_model")
    if not base_model:
        log.info("token-lookup control skipped: %s names no extraction.base_model (its tokenizer)", checkpoint)
        return {}
    tokenizer = load_tokenizer(str(base_model))
    out = token_lookup_control(train.vectors, train.contexts, held, contexts, tokenizer, baseline)
    return {**out, "token_lookup_source": cfg.lookup_data or cfg.train_data}


def shipped_card(model: str = "") -> dict[str, Any]:
    """The evaluation card of the NLA shipped for embedded model ``model`` (default: the default target's,
    ``nla/resources/default_nla/card.json``), measured when that NLA was built."""
    name = shipped_model(model) if model else DEFAULT_TARGET
    path = shipped_nla_folder(name) / "card.json"
    if not path.exists():
        raise NLAError(
            f"no NLA is shipped for {name} in this installation; evaluate one with "
            "`nla eval --av AV --ar AR --data HELD_OUT`"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def parse_stages(specs: list[str]) -> list[tuple[str, str, str]]:
    """``["name=av_dir,ar_dir", ...]`` -> ``[(name, av_dir, ar_dir), ...]``; one clear error otherwise."""
    out = []
    for spec in specs:
        name, _, dirs = spec.partition("=")
        av, _, ar = dirs.partition(",")
        if not name or not av or not ar or "," in ar:
            raise NLAError(f"bad --stage {spec!r}: expected NAME=AV_DIR,AR_DIR")
        out.append((name, av, ar))
    return out


def spread_rows(doc_ids: list[str], k: int) -> list[int]:
    """Up to ``k`` row indices from as many different documents as possible, spread over the rows."""
    firsts = [i for i, d in enumerate(doc_ids) if i == 0 or d != doc_ids[i - 1]]
    pool = firsts if len(firsts) >= k else list(range(len(doc_ids)))
    if k <= 0 or not pool:
        return []
    step = len(pool) / min(k, len(pool))
    return sorted({pool[int(j * step)] for j in range(min(k, len(pool)))})


def fingerprint(vecs: torch.Tensor) -> str:
    """A short hash of the held-out vectors (float32 bytes): two cards with it equal scored the same rows."""
    return hashlib.sha256(vecs.detach().to(torch.float32).contiguous().numpy().tobytes()).hexdigest()[:16]


def read_card(path: str) -> dict[str, Any]:
    try:
        card = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise NLAError(f"cannot read --earlier {path}: {e}") from e
    if not isinstance(card, dict) or not isinstance(card.get("ladder"), dict) or "rows" not in card:
        raise NLAError(f"--earlier {path} is not an evaluation card (no rows/ladder)")
    return card


def split_earlier(value: str) -> tuple[str, str]:
    """``--earlier [LABEL=]PATH`` -> (label, path); an existing path or one whose left part has a slash is
    taken whole."""
    label, sep, path = value.partition("=")
    if sep and label and path and "/" not in label and not Path(value).exists():
        return label, path
    return "", value


def earlier_stages(old: dict[str, Any], new: dict[str, Any], source: str, *, label: str = "") -> dict[str, Any]:
    """The stage rows of an earlier card, once it is shown to have scored the same held-out rows as ``new``:
    same row count and baseline B, and the same fingerprint of the vectors (or, for cards older than the
    fingerprint, the same token-lookup control, which is a function of the held-out vectors).

    The rows that card kept from its own earlier card come first (oldest first), under their names; its
    own stages follow, named ``"<label> <stage>"`` when a label is given."""

    def same(a: Any, b: Any) -> bool:
        return isinstance(a, int | float) and isinstance(b, int | float) and abs(a - b) < 1e-6

    problem = ""
    if old["rows"] != new["rows"]:
        problem = f"{old['rows']} rows, this card {new['rows']}"
    elif not same(old.get("baseline"), new["baseline"]):
        problem = f"baseline B {old.get('baseline')}, this card {new['baseline']:.6f}"
    elif "heldout_fingerprint" in old:
        if old["heldout_fingerprint"] != new["heldout_fingerprint"]:
            problem = "other held-out vectors (fingerprint differs)"
    else:
        a = (old.get("token_lookup") or {}).get("fve_token_lookup")
        b = (new.get("token_lookup") or {}).get("fve_token_lookup")
        if a is None or b is None:
            problem = "no fingerprint, and no token-lookup control on both cards to compare the rows by"
        elif not same(a, b):
            problem = f"token-lookup control {a:.6f}, this card {b:.6f}: other held-out rows"
    if problem:
        raise NLAError(f"--earlier {source} was not measured on these held-out rows: {problem}")
    names = [n for n in old["ladder"] if n != "each_beats_the_one_before" and isinstance(old.get(n), dict)]
    older = old.get("earlier") or {}
    stages = dict(older.get("stages", {}))
    stages.update({f"{label} {n}" if label else n: old[n] for n in names})
    return {"source": source, "sources": [*_sources(older), source], "stages": stages}


def _sources(earlier: dict[str, Any]) -> list[str]:
    """The cards an ``earlier`` block was kept from, oldest first (cards before chaining name one)."""
    return earlier.get("sources", [earlier["source"]] if "source" in earlier else [])


def read_compute(path: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise NLAError(f"cannot read --compute {path}: {e}") from e


_STAGE_TITLES = {
    "ar_sft_teacher": "AR-SFT reading teacher text",
    "av_sft_round_trip": "AV-SFT round trip",
    "rl_current_ar": "after RL (co-trained AR)",
    "rl_frozen_sft_ar": "after RL (frozen AR-SFT)",
}


def _stage_line(title: str, m: dict[str, Any]) -> str:
    ret = next((v for k, v in m.items() if k.startswith("retrieval_top1")), float("nan"))
    fmt = (
        f" {m['tag_failure_rate']:>8.2f} {m['truncation_rate']:>6.2f} {m['len_mean']:>5.0f}"
        if "tag_failure_rate" in m
        else f" {'-':>8} {'-':>6} {'-':>5}"
    )
    grounded = f" {m['quote_grounding']:>13.2f}" if "quote_grounding" in m else f" {'-':>13}"
    return (
        f"{title:<32} {m['fve_nrm']:>+8.3f} {m['fve_shuffled']:>+8.3f} "
        f"{m['fve_empty']:>+7.3f} {ret:>7.3f}{fmt}{grounded}"
    )


def format_card(card: dict[str, Any], *, examples: bool = True) -> str:
    """The card as readable text: the ladder with controls and format health, examples, compute."""
    lines = [
        f"held-out rows: {card['rows']}, baseline B = {card['baseline']:.4f} ({card.get('baseline_source', '')})",
        "",
        f"{'stage':<32} {'fve_nrm':>8} {'shuffled':>8} {'empty':>7} {'top1@8':>7} {'tag-fail':>8} "
        f"{'trunc':>6} {'len':>5} {'quotes-in-ctx':>13}",
    ]
    names = [n for n in _STAGE_TITLES if n in card] + [
        n for n in card.get("ladder", {}) if n not in _STAGE_TITLES and n != "each_beats_the_one_before"
    ]
    lines += [_stage_line(_STAGE_TITLES.get(n, n), card[n]) for n in names]
    old = card.get("earlier")
    if old:
        lines += ["", f"earlier NLAs, same held-out rows (kept from {', '.join(_sources(old))}):"]
        lines += [_stage_line(f"  {_STAGE_TITLES.get(n, n)}", m) for n, m in old["stages"].items()]
    tr = card.get("best_of_transfer")
    if tr:
        lines += [
            "",
            f"best-of read by a second AR ({tr['reader']}): "
            + ", ".join(f"{k} {v:+.3f}" for k, v in tr.items() if k != "reader"),
        ]
    ctl = {k: v for k, v in card.get("controls", {}).items() if k not in LOOKUP_CONTROLS}
    if ctl:
        lines += ["", "controls (any AR): " + ", ".join(f"{k.removeprefix('fve_')} {v:+.3f}" for k, v in ctl.items())]
    lookup = card.get("controls", {})
    if "fve_token_lookup" in lookup:
        lines.append(
            f"token lookup (no model; mean training vector of the final token): {lookup['fve_token_lookup']:+.3f}, "
            f"last two tokens {lookup.get('fve_token_lookup_2', float('nan')):+.3f}; "
            "an explanation carries more than its final token only where it beats these"
        )
    if examples and card.get("examples"):
        lines += ["", "examples (held-out):"]
        for ex in card["examples"]:
            lines.append(f"  context: ...{(ex.get('context_tail') or '')[-90:]!r}")
            for k, v in ex.items():
                if k not in ("row", "doc_id", "context_tail"):
                    lines.append(f"    {k}: {text_for_ar(v) if isinstance(v, str) else v}"[:400])
    if card.get("compute"):
        lines += (
            ["", "compute:"] + [f"  {k}: {v}" for k, v in card["compute"].items()]
            if isinstance(card["compute"], dict)
            else ["", f"compute: {card['compute']}"]
        )
    return "\n".join(lines)


__all__ = [
    "EvalConfig",
    "earlier_stages",
    "evaluation_card",
    "fingerprint",
    "format_card",
    "parse_stages",
    "read_card",
    "require_inputs",
    "shipped_card",
    "split_earlier",
    "spread_rows",
]
