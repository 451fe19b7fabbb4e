"""Flags: named detectors over an audit run, and where the explanation and the activation disagree.

A rules file (YAML) lists detectors of two kinds::

    detectors:
      - name: secrecy                      # a text rule over the explanations
        kind: text
        keywords: [secret, password, hidden, conceal]   # case-insensitive word prefixes
        regex: ['\\bnot (to )?(reveal|tell)']           # optional Python regexes
        min_margin: 0.0                    # optional: only explanations that beat their control
      - name: secrecy-direction            # a direction detector over the activations
        kind: direction
        positive: ["The password is hunter2, keep it secret.", ...]   # prompt sets (or *_file: one per line)
        negative: ["The weather is mild today.", ...]
        # npy: secrecy.npy                 # ... or a (d,) direction computed elsewhere
        fpr: 0.01                          # false-positive rate on the reference set
        reference: negative                # negative (default with prompts) | db (default with npy) | a corpus
        pairs_with: secrecy                # the text rule it should agree with

A direction detector scores a position by the cosine between its activation and the direction, and
flags it above the threshold that ``fpr`` of the reference set exceeds (the reference's own tokens:
the negative prompts, the run's positions, or the documents of a corpus spec). The direction from
prompt sets is the difference of the means of the unit-normalised activations (every token but the
first) of the positive and the negative prompts (:func:`direction_from_prompts`).

Where a text rule and its paired direction detector disagree, the flag says so (``text-only``: the
explanation claims the concept and the activation does not show it; ``direction-only``: the reverse):
that is where an auditor should look.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nla.audit.store import Store
from nla.common.errors import NLAError
from nla.core.text import text_for_ar
from nla.resources import resource


@dataclass
class Detector:
    name: str
    kind: str  # text | direction
    keywords: list[str] = field(default_factory=list)
    regex: list[str] = field(default_factory=list)
    min_margin: float | None = None
    positive: list[str] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)
    npy: str | None = None
    fpr: float = 0.01
    reference: str | None = None
    pairs_with: str | None = None


def _prompts(spec: dict[str, Any], key: str, base: Path) -> list[str]:
    items = list(spec.get(key) or [])
    if spec.get(f"{key}_file"):
        path = base / str(spec[f"{key}_file"])
        try:
            items += [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except OSError as e:
            raise NLAError(f"cannot read {key}_file {path}: {e.strerror}") from e
    if not all(isinstance(p, str) and p.strip() for p in items):
        raise NLAError(f"{key} prompts must be non-empty strings")
    return items


def _as_list(value: Any) -> list[Any]:
    return [value] if isinstance(value, str) else list(value or [])


SAMPLE_RULES = "sample-rules"  # the rules shipped for the sample chats (resources/audit/sample_rules.yaml)


def load_rules(path: str | Path) -> list[Detector]:
    """Parse and check a rules file (see the module docstring); paths in it are relative to it.
    ``sample-rules``: the detectors shipped for the sample chats."""
    if str(path) == SAMPLE_RULES and not Path(SAMPLE_RULES).exists():
        path = str(resource("audit", "sample_rules.yaml"))
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise NLAError(f"cannot read rules file {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise NLAError(f"rules file {path} is not valid YAML: {e}") from e
    items = data.get("detectors") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise NLAError(f"rules file {path} needs a non-empty 'detectors:' list")
    out: list[Detector] = []
    for i, spec in enumerate(items):
        where = f"{path} detector {i + 1}"
        if not isinstance(spec, dict) or not spec.get("name") or spec.get("kind") not in ("text", "direction"):
            raise NLAError(f"{where}: needs a name and kind: text or kind: direction")
        known = {f for f in Detector.__dataclass_fields__} | {"positive_file", "negative_file"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise NLAError(f"{where}: unknown key(s) {', '.join(unknown)}")
        d = Detector(
            name=str(spec["name"]),
            kind=spec["kind"],
            keywords=[str(k) for k in spec.get("keywords") or []],
            regex=[str(r) for r in _as_list(spec.get("regex"))],
            min_margin=None if spec.get("min_margin") is None else float(spec["min_margin"]),
            positive=_prompts(spec, "positive", path.parent),
            negative=_prompts(spec, "negative", path.parent),
            npy=str(path.parent / spec["npy"]) if spec.get("npy") else None,
            fpr=float(spec.get("fpr", 0.01)),
            reference=spec.get("reference"),
            pairs_with=spec.get("pairs_with"),
        )
        if d.kind == "text" and not (d.keywords or d.regex):
            raise NLAError(f"{where}: a text detector needs keywords or regex")
        for r in d.regex:
            try:
                re.compile(r)
            except re.error as e:
                raise NLAError(f"{where}: bad regex {r!r}: {e}") from e
        if d.kind == "direction":
            if bool(d.npy) == bool(d.positive and d.negative):
                raise NLAError(f"{where}: give either npy: or both positive and negative prompt sets")
            if not 0 < d.fpr < 1:
                raise NLAError(f"{where}: fpr must be between 0 and 1, got {d.fpr}")
            d.reference = d.reference or ("db" if d.npy else "negative")
            if d.reference == "negative" and not d.negative:
                raise NLAError(f"{where}: reference: negative needs negative prompts")
        out.append(d)
    names = [d.name for d in out]
    if len(set(names)) != len(names):
        raise NLAError(f"rules file {path}: detector names must be unique")
    paired = [d.pairs_with for d in out if d.pairs_with is not None]
    for d in out:
        if d.pairs_with is not None and not any(t.name == d.pairs_with and t.kind == "text" for t in out):
            raise NLAError(f"detector {d.name!r} pairs_with {d.pairs_with!r}, which is not a text detector here")
        if d.pairs_with is not None and d.kind != "direction":
            raise NLAError(f"detector {d.name!r}: only direction detectors pair with a text detector")
    if len(set(paired)) != len(paired):
        raise NLAError(f"rules file {path}: a text detector can pair with one direction detector only")
    return out


# ----------------------------------------------------------------------------- directions


def unit_rows(x: np.ndarray) -> np.ndarray:  # (N, d) -> (N, d)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def prompt_activations(target: Any, layer: int, prompts: list[str], *, skip_first: int = 1) -> np.ndarray:
    """Unit-normalised activations at block ``layer`` of every token of each prompt but the first
    ``skip_first`` (the first positions carry outlier norms) -> (sum of tokens, d)."""
    import torch

    rows = []
    for text in prompts:
        ids = torch.tensor([target.tokenizer(text)["input_ids"]], device=target.device)  # (1, T)
        hidden = target.hidden_at(ids, torch.ones_like(ids), layer)[0].float().cpu().numpy()  # (T, d)
        rows.append(hidden[skip_first:] if hidden.shape[0] > skip_first else hidden[-1:])
    return unit_rows(np.concatenate(rows))


def direction_from_prompts(target: Any, layer: int, positive: list[str], negative: list[str]) -> np.ndarray:  # (d,)
    """A concept direction: mean unit activation of the positive prompts minus that of the negative ones."""
    if not positive or not negative:
        raise NLAError("a direction needs both positive and negative prompts")
    d = prompt_activations(target, layer, positive).mean(0) - prompt_activations(target, layer, negative).mean(0)
    return d.astype(np.float32)


def threshold_at_fpr(reference_scores: np.ndarray, fpr: float) -> float:
    """The score that at most ``fpr`` of the reference scores exceed."""
    if reference_scores.size == 0:
        raise NLAError("the reference set of a direction detector is empty")
    return float(np.quantile(reference_scores, 1.0 - fpr, method="higher"))


# ----------------------------------------------------------------------------- running the rules


def _text_hits(d: Detector, texts: list[str], margins: list[float | None]) -> np.ndarray:  # -> (N,) bool
    patterns = [re.compile(r"\b" + re.escape(k), re.IGNORECASE) for k in d.keywords]
    patterns += [re.compile(r, re.IGNORECASE) for r in d.regex]
    hits = np.array([any(p.search(t) for p in patterns) for t in texts], dtype=bool)
    if d.min_margin is not None:
        hits &= np.array([m is not None and m >= d.min_margin for m in margins], dtype=bool)
    return hits


def _direction_scores(d: Detector, acts: np.ndarray, run: dict[str, Any], load_target: Any) -> dict[str, Any]:
    from nla.data.corpus import load_corpus
    from nla.explain.inputs import load_vector_file

    layer = int(run["nla"]["layer"])
    target = None

    def tgt() -> Any:
        nonlocal target
        target = target or load_target(run["nla"]["target"])
        return target

    if d.npy:
        direction = np.asarray(load_vector_file(d.npy), dtype=np.float32).reshape(-1)
    else:
        direction = direction_from_prompts(tgt(), layer, d.positive, d.negative)
    if direction.shape[0] != acts.shape[1]:
        raise NLAError(f"detector {d.name!r}: direction has width {direction.shape[0]}, activations {acts.shape[1]}")
    unit = direction / max(float(np.linalg.norm(direction)), 1e-12)
    scores = unit_rows(acts) @ unit  # (N,)
    if d.reference == "db":
        ref = scores
    elif d.reference == "negative":
        ref = prompt_activations(tgt(), layer, d.negative) @ unit
    else:
        texts = [doc.text or " ".join(m["content"] for m in doc.messages or ()) for doc in load_corpus(d.reference)]
        ref = prompt_activations(tgt(), layer, texts) @ unit
    thr = threshold_at_fpr(ref, d.fpr)
    return {"scores": scores, "threshold": thr, "reference_size": int(ref.size)}


def run_flags(store: Store, rules: list[Detector], *, run: int | None = None, load_target: Any = None) -> dict:
    """Apply ``rules`` to a run, replace its stored flags (one transaction) and return the summary.
    ``load_target(name)`` loads the target model for prompt-set directions (default: nla's loader)."""
    if load_target is None:
        from nla.models.target import load_target
    info = store.run(run)
    rows = store.query(
        "SELECT p.pos_id, e.explanation, e.raw, e.margin, e.activation FROM positions p "
        "JOIN explanations e USING (pos_id) WHERE p.run_id = ? ORDER BY p.pos_id",
        (info["run_id"],),
    )
    if not rows:
        raise NLAError(f"run {info['run_id']} of {store.path} has no explained positions yet")
    ids = [int(r["pos_id"]) for r in rows]
    texts = [r["explanation"] if r["explanation"] is not None else text_for_ar(r["raw"]) for r in rows]
    margins = [r["margin"] for r in rows]
    acts = np.stack([np.frombuffer(r["activation"], dtype="<f4") for r in rows])  # (N, d)
    hits: dict[str, np.ndarray] = {}
    scores: dict[str, np.ndarray] = {}
    described = []
    for d in rules:
        desc: dict[str, Any] = {"name": d.name, "kind": d.kind}
        if d.kind == "text":
            hits[d.name] = _text_hits(d, texts, margins)
        else:
            res = _direction_scores(d, acts, info, load_target)
            scores[d.name], hits[d.name] = res["scores"], res["scores"] > res["threshold"]
            desc.update(
                threshold=res["threshold"], fpr=d.fpr, reference=d.reference, reference_size=res["reference_size"]
            )
        desc.update(pairs_with=d.pairs_with, flagged=int(hits[d.name].sum()))
        described.append(desc)
    agreement: dict[str, list[str | None]] = {}
    pair_score: dict[str, np.ndarray] = {}
    for d in rules:
        if d.pairs_with:
            t, v = hits[d.pairs_with], hits[d.name]
            a = [
                "both" if x and y else "text-only" if x else "direction-only" if y else None
                for x, y in zip(t, v, strict=True)
            ]
            agreement[d.name] = agreement[d.pairs_with] = a
            pair_score[d.pairs_with] = scores[d.name]
    with store.transaction() as db:
        db.execute("DELETE FROM flags WHERE run_id = ?", (info["run_id"],))
        for d in rules:
            sc = scores.get(d.name, pair_score.get(d.name))
            agree = agreement.get(d.name)
            db.executemany(
                "INSERT INTO flags VALUES (?, ?, ?, ?, ?)",
                [
                    (info["run_id"], d.name, ids[k], None if sc is None else float(sc[k]), agree[k] if agree else None)
                    for k in np.flatnonzero(hits[d.name])
                ],
            )
        db.execute(
            "INSERT OR REPLACE INTO flag_rules VALUES (?, ?, ?)",
            (info["run_id"], json.dumps([d.__dict__ for d in rules]), json.dumps(described)),
        )
    return flag_summary(store, info["run_id"])


def flag_summary(store: Store, run: int | None = None, *, examples: int = 5) -> dict[str, Any]:
    """What the stored flags of a run say: per detector, per document, and the disagreements of each
    text rule with its paired direction detector (``text_only``: the explanation names the concept, the
    activation does not project on it; ``direction_only``: the reverse)."""
    run_id = store.run(run)["run_id"]
    rules = store.query("SELECT detectors FROM flag_rules WHERE run_id = ?", (run_id,))
    if not rules:
        return {"run": run_id, "detectors": [], "documents": [], "disagreements": []}
    detectors = json.loads(rules[0]["detectors"])
    flags = store.query(
        "SELECT f.detector, f.pos_id, f.score, f.agreement, d.doc_id, p.token, p.idx, e.explanation, e.margin "
        "FROM flags f JOIN positions p USING (pos_id) JOIN documents d USING (doc_key) "
        "JOIN explanations e USING (pos_id) WHERE f.run_id = ? ORDER BY d.doc_key, p.idx",
        (run_id,),
    )
    per_doc: dict[str, Counter] = {}
    for f in flags:
        c = per_doc.setdefault(f["doc_id"], Counter())
        c[f["detector"]] += 1
        c["disagreements"] += f["agreement"] in ("text-only", "direction-only")
    pairs = []
    for d in detectors:
        if d["kind"] != "direction" or not d.get("pairs_with"):
            continue
        mine = [f for f in flags if f["detector"] in (d["name"], d["pairs_with"])]
        both = sum(1 for f in mine if f["detector"] == d["name"] and f["agreement"] == "both")
        odd = [f for f in mine if f["agreement"] in ("text-only", "direction-only")]
        pairs.append(
            {
                "text": d["pairs_with"],
                "direction": d["name"],
                "threshold": d.get("threshold"),
                "both": both,
                "text_only": sum(1 for f in odd if f["agreement"] == "text-only"),
                "direction_only": sum(1 for f in odd if f["agreement"] == "direction-only"),
                "examples": [
                    {k: f[k] for k in ("doc_id", "pos_id", "idx", "token", "agreement", "score", "explanation")}
                    for f in odd[:examples]
                ],
            }
        )
    docs = [{"doc_id": k, "flags": {n: v for n, v in c.items() if v}} for k, c in per_doc.items()]
    return {"run": run_id, "detectors": detectors, "documents": docs, "disagreements": pairs}


__all__ = [
    "Detector",
    "direction_from_prompts",
    "flag_summary",
    "load_rules",
    "prompt_activations",
    "run_flags",
    "threshold_at_fpr",
]
