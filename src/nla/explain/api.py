"""Inference: explain the activations of a text (or of arbitrary directions) with a trained NLA.

:class:`NLA` bundles the target model (where activations come from), the activation verbalizer (AV,
vector -> text) and optionally the activation reconstructor (AR, text -> vector). With an AR every
explanation gets an honest round-trip score: the cosine and ``mse_nrm`` between the AR's reconstruction
and the true activation, and ``fve_nrm = 1 - mse_nrm / B`` when the predict-the-mean baseline ``B`` is
known (sidecar field ``eval.baseline_mse`` of the AR or AV, or ``baseline=``). An answer without a
closed ``<explanation>`` tag has ``explanation=None`` (a format failure) but is still scored, on its raw
text with any tags removed, so every record has a score. Each record also carries
the AR's score for an EMPTY explanation (``control_cosine``, and ``control_fve`` with a baseline): an
explanation is only informative where it beats that control, by the margin of :mod:`nla.explain.trust`
(``beats_control``).

Text is tokenised like extraction does: plain text with ``tokenizer(text)``, chats with
``apply_chat_template`` in one step; activations are the output of block ``layer`` (``hidden_at``). A
position past the target's context window is an error (``max_tokens`` keeps the last tokens instead).
Explaining vectors needs no target: ``NLA.from_pretrained(..., with_target=False)`` loads the AV/AR only.

>>> nla = NLA.from_pretrained("runs/nla/av", "runs/nla/ar")            # doctest: +SKIP
>>> for r in nla.explain("The Eiffel Tower is in Paris.", positions="last"):  # doctest: +SKIP
...     print(r.token, r.cosine, r.explanation)
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nla.common.errors import NLAError
from nla.common.meta import MODEL_SIDECAR, read_model_sidecar
from nla.core.metrics import cosine, fve_nrm, mse_nrm
from nla.core.text import cjk_fraction, extract_explanation, text_for_ar
from nla.evaluate.rerank import DEFAULT_MIN_SUPPORT, DEFAULT_TEMPERATURE, candidates, resolve_best_of
from nla.explain.inputs import Encoded, as_vectors, encode_input, select_tokens
from nla.explain.trust import TokenLookup, beats_control, control_fve, find_lookup, lookup_scores, worth_reading
from nla.models.ar import ActivationReconstructor
from nla.models.av import CJK_FAILURE_THRESHOLD, ActivationVerbalizer
from nla.models.target import (
    DEFAULT_TARGET,
    Target,
    embedded_name,
    hub_offline,
    is_hub_id,
    load_target,
    shipped_nla_folder,
)

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One generated answer and its round-trip scores (None where unknown)."""

    raw: str
    explanation: str | None
    cosine: float | None = None
    mse_nrm: float | None = None
    fve: float | None = None
    cjk: bool = False


@dataclass
class TokenExplanation:
    """The explanation of the activation at one token of a text (first sample; all in ``samples``)."""

    token: str  # the token's text (with its leading space, if any)
    position: int  # index in the tokenised input
    explanation: str | None  # text inside <explanation> tags; None if the answer has no closed tag
    raw: str  # the AV's full answer
    fve: float | None = None  # 1 - mse_nrm / baseline (None without an AR or a known baseline)
    cosine: float | None = None  # cos(AR(explanation), activation)
    mse_nrm: float | None = None  # 2 (1 - cosine)
    cjk: bool = False  # the answer is mostly CJK: the injection probably failed
    control_cosine: float | None = None  # cos(AR(""), activation): the empty-explanation control
    samples: list[Sample] = field(default_factory=list)  # every sample (one unless num_samples > 1)
    control_fve: float | None = None  # the control as fve (with a baseline)
    beats_control: bool | None = None  # beats the control by the margin of nla.explain.trust (None: unscored)
    lookup_fve: float | None = None  # fve of the token lookup (the token's mean training vector)
    worth_reading: bool | None = None  # the verdict of nla.explain.trust: fve > 0 and above the lookup


@dataclass
class VectorExplanation:
    """The explanation of one arbitrary direction (row ``index`` of the input)."""

    index: int
    norm: float  # the input vector's norm (the AV rescales it to its injection scale anyway)
    explanation: str | None
    raw: str
    cosine: float | None = None
    mse_nrm: float | None = None
    fve: float | None = None
    cjk: bool = False
    control_cosine: float | None = None
    samples: list[Sample] = field(default_factory=list)
    control_fve: float | None = None
    beats_control: bool | None = None
    lookup_fve: float | None = None  # a direction has no token: the overall training mean
    worth_reading: bool | None = None


@dataclass(frozen=True)
class Decoding:
    """The decoding options of one ``explain*`` call (their meaning: :meth:`NLA.explain`)."""

    max_new_tokens: int
    num_samples: int
    do_sample: bool
    temperature: float | None
    top_p: float
    batch_size: int
    seed: int | None
    best_of: int | None
    min_support: int


# ----------------------------------------------------------------------------- checkpoints


def resolve_nla_paths(av: str | None, ar: str | None, target: str | None = None) -> tuple[str, str | None]:
    """The AV/AR to use: the given ones, else the NLA shipped for ``target``: another embedded model's under
    ``nla/resources/nla/<name>``, else (any other target, or none) the default one, ``resources/default_nla``
    (whose d_model the target must then share)."""
    if av is not None:
        return av, ar
    name = embedded_name(target) if target else None
    shipped = shipped_nla_folder(target)
    if (shipped / "av" / MODEL_SIDECAR).exists():
        shipped_ar = shipped / "ar"
        return str(shipped / "av"), ar or (str(shipped_ar) if (shipped_ar / MODEL_SIDECAR).exists() else None)
    if name not in (None, DEFAULT_TARGET):
        raise NLAError(
            f"no NLA is shipped for {name} yet: pass --av PATH (and --ar PATH), or train one with "
            f"`nla train pipeline --preset {name} --run-dir runs/{name}`"
        )
    raise NLAError(
        "no trained NLA is available: pass --av PATH (and --ar PATH) to a trained checkpoint, "
        "or train one with `nla train pipeline` (its av/ and ar/ directories)"
    )


def local_checkpoint(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """A checkpoint directory and its sidecar: a local directory, or an HF Hub id downloaded (when online)
    into the HF cache. A directory without ``nla_meta.yaml`` is an error."""
    p = Path(path).expanduser()
    if not p.is_dir():
        name = str(path)
        if name.startswith((".", "/", "~")) or p.exists() or name.count("/") != 1 or not is_hub_id(name):
            raise NLAError(f"NLA checkpoint {name!r} is not a directory (nor an HF Hub id like owner/name)")
        offline = hub_offline()
        try:
            from huggingface_hub import snapshot_download

            p = Path(snapshot_download(name, local_files_only=offline))
        except Exception as e:  # any hub or network failure becomes one clear line
            if offline:
                raise NLAError(
                    f"NLA checkpoint {name!r} is not in the local HF cache and the Hugging Face Hub is not "
                    "reachable (offline): download it once while online, or pass a local directory"
                ) from e
            raise NLAError(f"cannot fetch NLA checkpoint {name!r} from the HF Hub: {type(e).__name__}") from e
    if not (p / MODEL_SIDECAR).exists():
        raise NLAError(f"{p} has no {MODEL_SIDECAR}: it is not an NLA checkpoint (train one with `nla train pipeline`)")
    return p, read_model_sidecar(p)


def sidecar_baseline(*metas: dict[str, Any] | None) -> float | None:
    """``eval.baseline_mse`` from the first sidecar that has a positive finite one."""
    for meta in metas:
        value = ((meta or {}).get("eval") or {}).get("baseline_mse")
        try:
            b = float(value) if value is not None else None
        except (TypeError, ValueError):
            b = None
        if b is not None and math.isfinite(b) and b > 0:
            return b
    return None


class NLA:
    """A target model + AV (+ optional AR): explain activations of texts or arbitrary directions."""

    def __init__(
        self,
        av: ActivationVerbalizer,
        ar: ActivationReconstructor | None,
        target: Target | None,
        *,
        baseline: float | None = None,
        lookup: TokenLookup | None = None,
    ) -> None:
        self.av, self.ar, self.target = av, ar, target
        if av.layer < 0 and ar is not None:  # an official training-time AV sidecar states no layer; its AR does
            av.layer = int(ar.layer)
        self.layer = int(av.layer)
        self.baseline = baseline
        self.lookup = lookup  # the token-lookup reference of the verdict (nla.explain.trust)
        self._empty: tuple[ActivationReconstructor, torch.Tensor] | None = None  # AR("") for the control
        self._check()
        if ar is not None and baseline is None:
            log.info(
                "no predict-the-mean baseline known (sidecar eval.baseline_mse): reporting cosine and mse_nrm, not fve"
            )

    def _check(self) -> None:
        d_av = int(self.av.d_model)
        if self.target is not None and int(self.target.d_model) != d_av:
            raise NLAError(
                f"d_model mismatch: target {self.target.name} has {int(self.target.d_model)}, the AV expects {d_av}"
            )
        if self.ar is not None:
            if int(self.ar.d_model) != d_av:
                raise NLAError(f"d_model mismatch: the AV expects {d_av}, the AR predicts {int(self.ar.d_model)}")
            if int(self.ar.layer) != self.layer:
                raise NLAError(
                    f"layer mismatch: the AV explains layer {self.layer}, "
                    f"the AR reconstructs layer {int(self.ar.layer)}"
                )
        if self.target is not None:
            self.target.check_layer(self.layer)
        if self.lookup is not None and self.lookup.d_model != d_av:
            raise NLAError(f"d_model mismatch: the token lookup has {self.lookup.d_model}, the AV expects {d_av}")
        if self.baseline is not None and not (math.isfinite(self.baseline) and self.baseline > 0):
            raise NLAError(f"baseline must be a positive number, got {self.baseline}")

    @classmethod
    def from_pretrained(
        cls,
        av: str | os.PathLike[str] | None = None,
        ar: str | os.PathLike[str] | None = None,
        *,
        target: str | Target | None = None,
        device: str = "cpu",
        dtype: torch.dtype | str = torch.float32,
        baseline: float | None = None,
        with_target: bool = True,
    ) -> NLA:
        """Load an AV (and AR) checkpoint, ours or official (HF dir + ``nla_meta.yaml``), or hub ids.

        ``target`` defaults to the AV sidecar's ``extraction.base_model``. ``baseline`` overrides the
        sidecar's ``eval.baseline_mse``. Without ``av``: the NLA shipped with the package (AV and AR).
        ``with_target=False`` skips the target model (enough for :meth:`explain_vectors`).
        """

        if av is None:
            name = target if isinstance(target, str) else None
            av, ar = resolve_nla_paths(None, None if ar is None else str(ar), name)

        av_path, av_meta = local_checkpoint(av)
        ar_path, ar_meta = local_checkpoint(ar) if ar is not None else (None, None)
        verbalizer = ActivationVerbalizer.from_pretrained(
            av_path, device=device, dtype=dtype, merged=True
        ).for_inference()
        reconstructor = None
        if ar is not None:
            reconstructor = ActivationReconstructor.from_pretrained(
                ar_path, device=device, dtype=dtype, merged=True
            ).for_inference()
        tgt: Target | None
        if isinstance(target, Target) or not with_target:
            tgt = target if isinstance(target, Target) else None
        else:
            name = (
                target
                or getattr(verbalizer, "base_model", None)
                or ((av_meta or {}).get("extraction") or {}).get("base_model")
            )
            if not name:
                raise NLAError(f"the AV sidecar of {av} names no extraction.base_model: pass target=...")
            tgt = load_target(str(name), dtype=dtype, device=device)
        if baseline is None:
            baseline = sidecar_baseline(ar_meta, av_meta)
        table = find_lookup(av_path)
        lookup = TokenLookup.load(table) if table is not None else None
        return cls(verbalizer, reconstructor, tgt, baseline=baseline, lookup=lookup)

    # ------------------------------------------------------------------------- core

    def _need_target(self) -> Target:
        if self.target is None:
            raise NLAError("this NLA was loaded without its target model (with_target=False): it explains vectors only")
        return self.target

    def encode(self, text_or_messages: str | Sequence[dict[str, str]]) -> Encoded:
        return encode_input(self._need_target().tokenizer, text_or_messages)

    def select(
        self, text_or_messages: str | Sequence[dict[str, str]], positions: str | Sequence[int] = "text", **kw: Any
    ) -> tuple[Encoded, list[int]]:
        """The tokenised input (cut to ``max_tokens=`` when given) and the positions :meth:`explain` explains."""
        target = self._need_target()
        limit, source = target.context_window()
        return select_tokens(
            self.encode(text_or_messages), positions, limit=limit, model=target.name, limit_source=source, **kw
        )

    @torch.no_grad()
    def activations(self, input_ids: Sequence[int] | Encoded | str) -> torch.Tensor:  # -> (T, d) float32
        """The output of block ``layer`` at every position of one input: token ids, what :meth:`encode`
        returns (``nla.activations(nla.encode(text))``), or a text (encoded here)."""
        target = self._need_target()
        if isinstance(input_ids, str):
            input_ids = self.encode(input_ids)
        if isinstance(input_ids, Encoded):
            input_ids = input_ids.input_ids
        try:
            ids = torch.tensor([[int(i) for i in input_ids]], dtype=torch.long, device=target.device)  # (1, T)
        except (TypeError, ValueError) as e:
            raise NLAError(
                f"activations() takes token ids, nla.encode(text) or a text, not {type(input_ids).__name__}"
            ) from e
        if ids.shape[1] == 0:
            raise NLAError("activations() needs at least one token")
        hidden = target.hidden_at(ids, torch.ones_like(ids), self.layer)  # (1, T, d)
        return hidden[0].float().cpu()

    def _score(self, vectors: torch.Tensor, answers: list[list[str]], batch_size: int) -> list[list[Sample]]:
        """Parse answers and, with an AR, score each parsed explanation against its vector (N, d)."""
        samples = [
            [
                Sample(raw=a, explanation=extract_explanation(a), cjk=cjk_fraction(a) > CJK_FAILURE_THRESHOLD)
                for a in row
            ]
            for row in answers
        ]
        n_cjk = sum(s.cjk for row in samples for s in row)
        if n_cjk:
            log.warning(
                "%d of %d answers are mostly CJK text: the injection probably failed (check the marker and scale)",
                n_cjk,
                sum(len(r) for r in samples),
            )
        if self.ar is None:
            return samples
        flat = [(i, s) for i, row in enumerate(samples) for s in row]
        if flat:
            texts = [text_for_ar(s.raw) for _, s in flat]
            pred = self.ar.predict(texts, batch_size=max(1, batch_size)).float().cpu()  # (M, d)
            gold = vectors[[i for i, _ in flat]]  # (M, d)
            cos, mse = cosine(pred, gold), mse_nrm(pred, gold)  # (M,), (M,)
            for k, (_, s) in enumerate(flat):
                s.cosine, s.mse_nrm = float(cos[k]), float(mse[k])
                s.fve = fve_nrm(s.mse_nrm, self.baseline) if self.baseline is not None else None
        return samples

    def _control(self, vectors: torch.Tensor) -> list[float | None]:  # (N, d)
        """cos(AR(""), v) for each vector: what the AR gets from no explanation at all."""
        if self.ar is None:
            return [None] * vectors.shape[0]
        if self._empty is None or self._empty[0] is not self.ar:  # once per AR, not per batch
            self._empty = (self.ar, self.ar.predict([""], batch_size=1).float().cpu())  # (1, d)
        empty = self._empty[1]
        return [float(c) for c in cosine(empty.expand_as(vectors), vectors)]

    def _trust(self, row: list[Sample], control: float | None, lookup: tuple[Any, Any] = (None, None)) -> dict:
        """The record fields of the first sample plus its controls and the verdicts; ``lookup``: the
        token lookup's (fve, cosine) for this vector (:func:`nla.explain.trust.lookup_scores`)."""
        main, ctrl = _main(row), control_fve(control, self.baseline)
        beats = beats_control(main["fve"], main["cosine"], ctrl, control)
        worth = worth_reading(main["fve"], main["cosine"], lookup[0], lookup[1], beats)
        extra = dict(control_cosine=control, control_fve=ctrl, beats_control=beats, lookup_fve=lookup[0])
        return dict(**main, **extra, worth_reading=worth)

    def _lookups(self, vectors: torch.Tensor, token_ids: Sequence[int | None]) -> list[tuple[Any, Any]]:  # (N, d)
        fves, coss = lookup_scores(self.lookup, vectors, token_ids, self.baseline)
        return list(zip(fves, coss, strict=True))

    def _generate(self, vectors: torch.Tensor, **gen: Any) -> list[list[str]]:  # (N, d)
        answers = self.av.generate(vectors, **gen)
        if len(answers) != vectors.shape[0]:
            raise RuntimeError(f"the AV returned {len(answers)} answer lists for {vectors.shape[0]} vectors")
        return answers

    def explain(
        self,
        text_or_messages: str | Sequence[dict[str, str]],
        positions: str | Sequence[int] = "text",
        *,
        max_new_tokens: int = 150,
        num_samples: int = 1,
        do_sample: bool = False,
        temperature: float | None = None,
        top_p: float = 1.0,
        batch_size: int = 16,
        seed: int | None = None,
        best_of: int | None = None,
        min_support: int = DEFAULT_MIN_SUPPORT,
        max_tokens: int | None = None,
    ) -> list[TokenExplanation]:
        """Explain the activation at each selected token (see :mod:`nla.explain.positions` for ``positions``;
        the default ``text`` skips tokens the tokenizer or chat template added, such as a BOS token).

        Greedy by default; ``num_samples > 1`` samples (``do_sample`` is implied; ``temperature`` 1.0
        unless given). The record's main fields come from the first sample; all samples, scored, are in
        ``samples``. ``best_of`` K > 1 (needs the AR): the greedy answer and K-1 samples (``temperature``
        0.7 unless given), each keeping only the topic and salient words ``min_support`` of the K answers
        name (1 keeps all), best-scored first (:mod:`nla.evaluate.rerank`). Default: best of
        :data:`nla.evaluate.rerank.DEFAULT_BEST_OF` with an AR and no sampling options, else greedy (K = 1).
        A selected position at or past the target's context window is an error; ``max_tokens`` N keeps
        the last N tokens of the input (positions then count within them).
        """
        enc, picked = self.select(text_or_messages, positions, max_tokens=max_tokens)
        vectors = self.activations(enc.input_ids[: picked[-1] + 1])[picked]  # (P, d): later tokens never matter
        samples, control = self._run(
            vectors,
            Decoding(
                max_new_tokens, num_samples, do_sample, temperature, top_p, batch_size, seed, best_of, min_support
            ),
        )
        refs = self._lookups(vectors, [enc.input_ids[p] for p in picked])
        return [
            TokenExplanation(token=enc.tokens[p], position=p, samples=row, **self._trust(row, c, r))
            for p, row, c, r in zip(picked, samples, control, refs, strict=True)
        ]

    def explain_vectors(
        self,
        array: Any,
        *,
        max_new_tokens: int = 150,
        num_samples: int = 1,
        do_sample: bool = False,
        temperature: float | None = None,
        top_p: float = 1.0,
        batch_size: int = 16,
        seed: int | None = None,
        best_of: int | None = None,
        min_support: int = DEFAULT_MIN_SUPPORT,
    ) -> list[VectorExplanation]:
        """Explain arbitrary directions (N, d) or (d,): a neuron's output weights, an SAE feature, a
        steering vector. Only the direction matters. With an AR, the round-trip cosine is reported;
        ``best_of`` as in :meth:`explain`."""
        vectors = as_vectors(array, int(self.av.d_model))  # (N, d)
        samples, control = self._run(
            vectors,
            Decoding(
                max_new_tokens, num_samples, do_sample, temperature, top_p, batch_size, seed, best_of, min_support
            ),
        )
        norms = vectors.norm(dim=-1).tolist()
        refs = self._lookups(vectors, [None] * vectors.shape[0])
        return [
            VectorExplanation(index=i, norm=float(n), samples=row, **self._trust(row, c, r))
            for i, (n, row, c, r) in enumerate(zip(norms, samples, control, refs, strict=True))
        ]

    def _run(self, vectors: torch.Tensor, dec: Decoding) -> tuple[list[list[Sample]], list[float | None]]:  # (N, d)
        sampling = dec.num_samples > 1 or dec.do_sample
        best_of = resolve_best_of(dec.best_of, has_ar=self.ar is not None, sampling=sampling)
        if dec.num_samples < 1 or dec.max_new_tokens < 1 or dec.batch_size < 1 or best_of < 1:
            raise NLAError("num_samples, max_new_tokens, batch_size and best_of must be >= 1")
        if best_of > 1:
            return self._best_of(vectors, best_of, dec)
        answers = self._generate(
            vectors,
            max_new_tokens=dec.max_new_tokens,
            do_sample=sampling,
            temperature=1.0 if dec.temperature is None else dec.temperature,
            top_p=dec.top_p,
            num_samples=dec.num_samples,
            batch_size=dec.batch_size * dec.num_samples,  # batch_size counts activations, each with its samples
            seed=dec.seed,
        )
        return self._score(vectors, answers, dec.batch_size), self._control(vectors)

    def _best_of(self, vectors: torch.Tensor, k: int, dec: Decoding) -> tuple[list[list[Sample]], list[float | None]]:
        """Greedy + k-1 samples per vector, each with only the content claims ``dec.min_support`` of them
        make, every one scored, the lowest ``mse_nrm`` first (ties keep greedy)."""
        if self.ar is None:
            raise NLAError("best-of decoding needs an AR to choose with (give --ar)")
        if dec.num_samples > 1 or dec.do_sample:
            raise NLAError("best-of decoding makes its own samples: drop --num-samples / --do-sample")
        cands = candidates(
            self.av,
            vectors,
            k,
            temperature=DEFAULT_TEMPERATURE if dec.temperature is None else dec.temperature,
            max_new_tokens=dec.max_new_tokens,
            batch_size=dec.batch_size,
            seed=0 if dec.seed is None else dec.seed,
            min_support=dec.min_support,
        )
        answers = [cands.texts[i * k : (i + 1) * k] for i in range(vectors.shape[0])]
        scored = self._score(vectors, answers, dec.batch_size)
        ranked = [sorted(row, key=lambda s: s.mse_nrm if s.mse_nrm is not None else math.inf) for row in scored]
        return ranked, self._control(vectors)

    def explain_texts(
        self,
        inputs: Sequence[str | Sequence[dict[str, str]]],
        positions: str | Sequence[str | Sequence[int]] = "text",
        *,
        max_new_tokens: int = 150,
        num_samples: int = 1,
        do_sample: bool = False,
        temperature: float | None = None,
        top_p: float = 1.0,
        batch_size: int = 16,
        seed: int | None = None,
        best_of: int | None = None,
        min_support: int = DEFAULT_MIN_SUPPORT,
        max_tokens: int | None = None,
        return_activations: bool = False,
        return_reconstructions: bool = False,
    ) -> Any:
        """Explain the selected tokens of many texts (or chats) in ONE batched pass across documents.

        ``positions`` is one spec for every input or one per input (a spec string or a list of indices).
        Activations are computed per input (exactly as :meth:`explain` does); the AV then decodes all
        selected positions together in batches of ``batch_size``, so short inputs share batches: on CPU
        this is several times faster per position than calling :meth:`explain` once per text. Decoding
        options are those of :meth:`explain`. Returns one list of :class:`TokenExplanation` per input; with
        ``return_activations`` or ``return_reconstructions`` a tuple ``(records, activations,
        reconstructions)``: per input the (P_i, d) activations, and the AR's (P_i, d) reconstructions from
        each record's chosen answer (one more AR pass; None unless asked for, or without an AR).
        ``max_tokens`` N keeps the last N tokens of each input (as :meth:`explain`); positions index them.
        """
        specs = [positions] * len(inputs) if isinstance(positions, str) else list(positions)
        if len(specs) != len(inputs):
            raise NLAError(f"{len(inputs)} inputs but {len(specs)} position specs")
        encoded, picked, acts = [], [], []
        for item, spec in zip(inputs, specs, strict=True):
            enc, pos = self.select(item, spec, max_tokens=max_tokens)
            encoded.append(enc)
            picked.append(pos)
            acts.append(self.activations(enc.input_ids[: pos[-1] + 1])[pos])  # (P_i, d)
        wants = return_activations or return_reconstructions
        if not acts:
            return ([], [] if return_activations else None, None) if wants else []
        vectors = torch.cat(acts)  # (sum P_i, d)
        samples, control = self._run(
            vectors,
            Decoding(
                max_new_tokens, num_samples, do_sample, temperature, top_p, batch_size, seed, best_of, min_support
            ),
        )
        records: list[list[TokenExplanation]] = []
        start = 0
        ids = [enc.input_ids[p] for enc, pos in zip(encoded, picked, strict=True) for p in pos]
        refs_all = self._lookups(vectors, ids)
        for enc, pos in zip(encoded, picked, strict=True):
            rows, ctrl = samples[start : start + len(pos)], control[start : start + len(pos)]
            refs = refs_all[start : start + len(pos)]
            records.append(
                [
                    TokenExplanation(token=enc.tokens[p], position=p, samples=row, **self._trust(row, c, r))
                    for p, row, c, r in zip(pos, rows, ctrl, refs, strict=True)
                ]
            )
            start += len(pos)
        if not wants:
            return records
        recon = None
        if return_reconstructions and self.ar is not None:
            flat = [text_for_ar(r.raw) for recs in records for r in recs]
            pred = self.ar.predict(flat, batch_size=batch_size).float().cpu()  # (sum P_i, d)
            recon = list(pred.split([len(p) for p in picked]))
        return records, acts if return_activations else None, recon


def _main(row: list[Sample]) -> dict[str, Any]:
    s = row[0]
    return dict(explanation=s.explanation, raw=s.raw, fve=s.fve, cosine=s.cosine, mse_nrm=s.mse_nrm, cjk=s.cjk)


__all__ = [
    "NLA",
    "Sample",
    "TokenExplanation",
    "VectorExplanation",
    "local_checkpoint",
    "resolve_nla_paths",
    "sidecar_baseline",
]
