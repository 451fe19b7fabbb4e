"""Inference: explain the activations of a text (or of arbitrary directions) with a trained NLA.

:class:`NLA` bundles the target model (where activations come from), the activation verbalizer (AV,
vector -> text) and optionally the activation reconstructor (AR, text -> vector). With an AR every
explanation gets an honest round-trip score: the cosine and ``mse_nrm`` between the AR's reconstruction
and the true activation, and ``fve_nrm = 1 - mse_nrm / B`` when the predict-the-mean baseline ``B`` is
known (sidecar field ``eval.baseline_mse`` of the AR or AV, or ``baseline=``). An answer without a
closed ``<explanation>`` tag has ``explanation=None`` (a format failure) but is still scored, on its raw
text with any tags removed, so every record has a score. Each record also carries
the AR's score for an EMPTY explanation (``control_cosine``): an explanation is only informative where
it beats that control.

Text is tokenised like extraction does: plain text with ``tokenizer(text)``, chats with
``apply_chat_template`` in one step; activations are the output of block ``layer`` (``hidden_at``).

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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nla.av import CJK_FAILURE_THRESHOLD
from nla.errors import NLAError
from nla.meta import MODEL_SIDECAR, read_model_sidecar
from nla.metrics import cosine, fve_nrm, mse_nrm
from nla.positions import content_spans, overlap_mask, parse_positions
from nla.text import cjk_fraction, extract_explanation, text_for_ar

if TYPE_CHECKING:
    from nla.ar import ActivationReconstructor
    from nla.av import ActivationVerbalizer
    from nla.target import Target

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


@dataclass
class Encoded:
    """A tokenised input: ids, the display text of each token, and which tokens are assistant content."""

    input_ids: list[int]
    tokens: list[str]
    assistant_mask: list[bool] | None = None  # None for plain text (or when offsets are unavailable)


# ----------------------------------------------------------------------------- tokenisation


def _as_ids(out: Any) -> list[int]:
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    if torch.is_tensor(out):
        out = out.tolist()
    if out and isinstance(out[0], list):
        out = out[0]
    return [int(i) for i in out]


def token_texts(text: str, ids: Sequence[int], offsets: Sequence[tuple[int, int]] | None, tokenizer: Any) -> list[str]:
    """Display text of each token: the slice of ``text`` from the end of the previous token to the end of
    this one (so the pieces concatenate back to the text); decoded ids where offsets say nothing."""
    if offsets is None:
        return [tokenizer.decode([i]) for i in ids]
    out, prev = [], 0
    for tid, (_a, b) in zip(ids, offsets, strict=True):
        if b > prev:
            out.append(text[prev:b])
            prev = b
        else:
            out.append(tokenizer.decode([tid]))
    return out


def _check_messages(messages: Any) -> list[dict[str, str]]:
    if not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        raise NLAError("a chat must be a non-empty list of {'role': ..., 'content': ...} messages")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def encode_input(tokenizer: Any, text_or_messages: str | Sequence[dict[str, str]] | Any) -> Encoded:
    """Tokenise plain text (``tokenizer(text)``) or a chat (``apply_chat_template`` in one step).

    A :class:`nla.corpus.Document` is accepted too. For chats the rendered template is re-tokenised with
    offsets to find the tokens of assistant messages; if that does not reproduce the template's ids,
    token texts are decoded one by one and ``assistant_mask`` is None.
    """
    if hasattr(text_or_messages, "messages") and hasattr(text_or_messages, "text"):  # a Document
        doc = text_or_messages
        text_or_messages = doc.text if doc.text is not None else list(doc.messages)
    fast = bool(getattr(tokenizer, "is_fast", False))
    if isinstance(text_or_messages, str):
        text = text_or_messages
        if not text.strip():
            raise NLAError("the text to explain is empty")
        enc = tokenizer(text, return_offsets_mapping=fast)
        ids = [int(i) for i in enc["input_ids"]]
        offsets = [tuple(o) for o in enc["offset_mapping"]] if fast else None
        return Encoded(ids, token_texts(text, ids, offsets, tokenizer))
    messages = _check_messages(text_or_messages)
    if not getattr(tokenizer, "chat_template", None):
        raise NLAError("the target tokenizer has no chat template: pass plain text instead of messages")
    ids = _as_ids(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True))
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    if fast:
        enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
        if [int(i) for i in enc["input_ids"]] == ids:
            offsets = [tuple(o) for o in enc["offset_mapping"]]
            mask = overlap_mask(offsets, content_spans(rendered, messages))
            return Encoded(ids, token_texts(rendered, ids, offsets, tokenizer), mask)
    log.warning("cannot map chat tokens to characters; assistant positions are unavailable for this input")
    return Encoded(ids, token_texts(rendered, ids, None, tokenizer))


def as_vectors(array: Any, d_model: int) -> torch.Tensor:  # (N, d) or (d,) -> (N, d) float32
    """Validate arbitrary directions: 1-D or 2-D, width ``d_model``, finite, non-zero rows."""
    if isinstance(array, np.ndarray):
        if not np.issubdtype(array.dtype, np.number):
            raise NLAError(f"vectors must be numeric, got dtype {array.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    elif torch.is_tensor(array):
        t = array.detach().float().cpu()
    else:
        try:
            t = torch.tensor(array, dtype=torch.float32)
        except (TypeError, ValueError) as e:
            raise NLAError(f"cannot read vectors from {type(array).__name__}: {e}") from e
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or t.shape[0] == 0:
        raise NLAError(f"vectors must be a 1-D (d,) or 2-D (N, d) array, got shape {tuple(t.shape)}")
    if t.shape[1] != d_model:
        raise NLAError(f"vectors have width {t.shape[1]} but this NLA's d_model is {d_model}")
    bad = ~torch.isfinite(t).all(-1)
    if bool(bad.any()):
        raise NLAError(f"vector {int(bad.nonzero()[0, 0])} contains NaN or inf")
    zero = t.norm(dim=-1) == 0
    if bool(zero.any()):
        raise NLAError(f"vector {int(zero.nonzero()[0, 0])} is all zeros: a zero vector has no direction to explain")
    return t


def load_vector_file(path: str | os.PathLike[str], key: str | None = None) -> np.ndarray:  # -> (N, d) or (d,)
    """Read directions from ``.npy`` (numpy, ``allow_pickle=False``) or ``.safetensors`` (tensor ``key``;
    optional when the file holds exactly one tensor)."""
    p = Path(path)
    if not p.is_file():
        raise NLAError(f"no such vector file: {p}")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        if key is not None:
            raise NLAError("--key applies to .safetensors files only")
        try:
            return np.load(p, allow_pickle=False)
        except ValueError as e:
            raise NLAError(f"cannot read {p} as a plain numeric .npy array: {e}") from e
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(p))
        except (SafetensorError, OSError) as e:
            raise NLAError(f"cannot read {p} as safetensors: {e}") from e
        if key is None:
            if len(tensors) != 1:
                raise NLAError(f"{p} holds {len(tensors)} tensors; choose one with --key ({', '.join(sorted(tensors))})")
            key = next(iter(tensors))
        if key not in tensors:
            raise NLAError(f"{p} has no tensor {key!r}; it holds {', '.join(sorted(tensors))}")
        return tensors[key].float().numpy()
    raise NLAError(f"unsupported vector file {p.name}: use .npy or .safetensors")


# ----------------------------------------------------------------------------- checkpoints


def default_nla_dir() -> Path:
    return Path(__file__).parent / "data" / "default_nla"


def resolve_nla_paths(av: str | None, ar: str | None) -> tuple[str, str | None]:
    """The AV/AR to use: the given ones, else the NLA shipped under ``nla/data/default_nla/{av,ar}``."""
    if av is not None:
        return av, ar
    shipped = default_nla_dir()
    if (shipped / "av" / MODEL_SIDECAR).exists():
        shipped_ar = shipped / "ar"
        return str(shipped / "av"), ar or (str(shipped_ar) if (shipped_ar / MODEL_SIDECAR).exists() else None)
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
        if name.startswith((".", "/", "~")) or p.exists() or name.count("/") != 1:
            raise NLAError(f"NLA checkpoint {name!r} is not a directory (nor an HF Hub id like owner/name)")
        try:
            from huggingface_hub import snapshot_download

            p = Path(snapshot_download(name))
        except Exception as e:  # any hub or network failure becomes one clear line
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
        target: Target,
        *,
        baseline: float | None = None,
    ) -> None:
        self.av, self.ar, self.target = av, ar, target
        self.layer = int(av.layer)
        self.baseline = baseline
        self._check()
        if ar is not None and baseline is None:
            log.info("no predict-the-mean baseline known (sidecar eval.baseline_mse): reporting cosine and mse_nrm, not fve")

    def _check(self) -> None:
        d_t, d_av = int(self.target.d_model), int(self.av.d_model)
        if d_t != d_av:
            raise NLAError(f"d_model mismatch: target {self.target.name} has {d_t}, the AV expects {d_av}")
        if self.ar is not None:
            if int(self.ar.d_model) != d_av:
                raise NLAError(f"d_model mismatch: the AV expects {d_av}, the AR predicts {int(self.ar.d_model)}")
            if int(self.ar.layer) != self.layer:
                raise NLAError(f"layer mismatch: the AV explains layer {self.layer}, the AR reconstructs layer {int(self.ar.layer)}")
        self.target.check_layer(self.layer)
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
    ) -> NLA:
        """Load an AV (and AR) checkpoint, ours or official (HF dir + ``nla_meta.yaml``), or hub ids.

        ``target`` defaults to the AV sidecar's ``extraction.base_model``. ``baseline`` overrides the
        sidecar's ``eval.baseline_mse``. Without ``av``: the NLA shipped with the package (AV and AR).
        """
        from nla.av import ActivationVerbalizer
        from nla.target import Target, load_target

        if av is None:
            av, ar = resolve_nla_paths(None, None if ar is None else str(ar))

        av_path, av_meta = local_checkpoint(av)
        ar_path, ar_meta = local_checkpoint(ar) if ar is not None else (None, None)
        verbalizer = ActivationVerbalizer.from_pretrained(av_path, device=device, dtype=dtype)
        reconstructor = None
        if ar is not None:
            from nla.ar import ActivationReconstructor

            reconstructor = ActivationReconstructor.from_pretrained(ar_path, device=device, dtype=dtype)
        if isinstance(target, Target):
            tgt = target
        else:
            name = target or getattr(verbalizer, "base_model", None) or ((av_meta or {}).get("extraction") or {}).get("base_model")
            if not name:
                raise NLAError(f"the AV sidecar of {av} names no extraction.base_model: pass target=...")
            tgt = load_target(str(name), dtype=dtype, device=device)
        if baseline is None:
            baseline = sidecar_baseline(ar_meta, av_meta)
        return cls(verbalizer, reconstructor, tgt, baseline=baseline)

    # ------------------------------------------------------------------------- core

    def encode(self, text_or_messages: str | Sequence[dict[str, str]]) -> Encoded:
        return encode_input(self.target.tokenizer, text_or_messages)

    @torch.no_grad()
    def activations(self, input_ids: Sequence[int]) -> torch.Tensor:  # -> (T, d) float32
        """The output of block ``layer`` at every position of one tokenised input."""
        ids = torch.tensor([list(input_ids)], dtype=torch.long, device=self.target.device)  # (1, T)
        hidden = self.target.hidden_at(ids, torch.ones_like(ids), self.layer)  # (1, T, d)
        return hidden[0].float().cpu()

    def _score(self, vectors: torch.Tensor, answers: list[list[str]], batch_size: int) -> list[list[Sample]]:
        """Parse answers and, with an AR, score each parsed explanation against its vector (N, d)."""
        samples = [[Sample(raw=a, explanation=extract_explanation(a), cjk=cjk_fraction(a) > CJK_FAILURE_THRESHOLD) for a in row] for row in answers]
        n_cjk = sum(s.cjk for row in samples for s in row)
        if n_cjk:
            log.warning("%d of %d answers are mostly CJK text: the injection probably failed (check the marker and scale)",
                        n_cjk, sum(len(r) for r in samples))
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
        empty = self.ar.predict([""], batch_size=1).float().cpu()  # (1, d)
        return [float(c) for c in cosine(empty.expand_as(vectors), vectors)]

    def _generate(self, vectors: torch.Tensor, **gen: Any) -> list[list[str]]:  # (N, d)
        answers = self.av.generate(vectors, **gen)
        if len(answers) != vectors.shape[0]:
            raise RuntimeError(f"the AV returned {len(answers)} answer lists for {vectors.shape[0]} vectors")
        return answers

    def explain(
        self,
        text_or_messages: str | Sequence[dict[str, str]],
        positions: str | Sequence[int] = "all",
        *,
        max_new_tokens: int = 150,
        num_samples: int = 1,
        do_sample: bool = False,
        temperature: float | None = None,
        top_p: float = 1.0,
        batch_size: int = 16,
        seed: int | None = None,
        best_of: int | None = None,
    ) -> list[TokenExplanation]:
        """Explain the activation at each selected token (see :mod:`nla.positions` for ``positions``).

        Greedy by default; ``num_samples > 1`` samples (``do_sample`` is implied; ``temperature`` 1.0
        unless given). The record's main fields come from the first sample; all samples, scored, are in
        ``samples``. ``best_of`` K > 1 (needs the AR): the greedy answer and K-1 samples (``temperature``
        0.7 unless given), best-scored first (:mod:`nla.rerank`). Default: best of
        :data:`nla.rerank.DEFAULT_BEST_OF` with an AR and no sampling options, else greedy (K = 1).
        """
        enc = self.encode(text_or_messages)
        picked = parse_positions(positions, len(enc.input_ids), assistant_mask=enc.assistant_mask)
        vectors = self.activations(enc.input_ids)[picked]  # (P, d)
        samples, control = self._run(vectors, max_new_tokens, num_samples, do_sample, temperature, top_p, batch_size, seed,
                                     best_of)
        return [
            TokenExplanation(token=enc.tokens[p], position=p, **_main(row), control_cosine=c, samples=row)
            for p, row, c in zip(picked, samples, control, strict=True)
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
    ) -> list[VectorExplanation]:
        """Explain arbitrary directions (N, d) or (d,): a neuron's output weights, an SAE feature, a
        steering vector. Only the direction matters. With an AR, the round-trip cosine is reported;
        ``best_of`` as in :meth:`explain`."""
        vectors = as_vectors(array, int(self.av.d_model))  # (N, d)
        samples, control = self._run(vectors, max_new_tokens, num_samples, do_sample, temperature, top_p, batch_size, seed,
                                     best_of)
        norms = vectors.norm(dim=-1).tolist()
        return [
            VectorExplanation(index=i, norm=float(n), **_main(row), control_cosine=c, samples=row)
            for i, (n, row, c) in enumerate(zip(norms, samples, control, strict=True))
        ]

    def _run(
        self,
        vectors: torch.Tensor,  # (N, d)
        max_new_tokens: int,
        num_samples: int,
        do_sample: bool,
        temperature: float | None,
        top_p: float,
        batch_size: int,
        seed: int | None,
        best_of: int | None = None,
    ) -> tuple[list[list[Sample]], list[float | None]]:
        from nla.rerank import resolve_best_of

        best_of = resolve_best_of(best_of, has_ar=self.ar is not None, sampling=num_samples > 1 or do_sample)
        if num_samples < 1 or max_new_tokens < 1 or batch_size < 1 or best_of < 1:
            raise NLAError("num_samples, max_new_tokens, batch_size and best_of must be >= 1")
        if best_of > 1:
            return self._best_of(vectors, best_of, max_new_tokens, temperature, batch_size, seed, num_samples, do_sample)
        gen = dict(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample or num_samples > 1,
            temperature=1.0 if temperature is None else temperature,
            top_p=top_p,
            num_samples=num_samples,
            batch_size=batch_size,
            seed=seed,
        )
        answers = self._generate(vectors, **gen)
        return self._score(vectors, answers, batch_size), self._control(vectors)

    def _best_of(
        self, vectors: torch.Tensor, k: int, max_new_tokens: int, temperature: float | None, batch_size: int,
        seed: int | None, num_samples: int, do_sample: bool,
    ) -> tuple[list[list[Sample]], list[float | None]]:
        """Greedy + k-1 samples per vector, every one scored, the lowest ``mse_nrm`` first (ties keep greedy)."""
        from nla.rerank import DEFAULT_TEMPERATURE, candidates

        if self.ar is None:
            raise NLAError("best-of decoding needs an AR to choose with (give --ar)")
        if num_samples > 1 or do_sample:
            raise NLAError("best-of decoding makes its own samples: drop --num-samples / --do-sample")
        cands = candidates(self.av, vectors, k, temperature=DEFAULT_TEMPERATURE if temperature is None else temperature,
                           max_new_tokens=max_new_tokens, batch_size=batch_size, seed=0 if seed is None else seed)
        answers = [cands.texts[i * k : (i + 1) * k] for i in range(vectors.shape[0])]
        scored = self._score(vectors, answers, batch_size)
        ranked = [sorted(row, key=lambda s: s.mse_nrm if s.mse_nrm is not None else math.inf) for row in scored]
        return ranked, self._control(vectors)


def _main(row: list[Sample]) -> dict[str, Any]:
    s = row[0]
    return dict(explanation=s.explanation, raw=s.raw, fve=s.fve, cosine=s.cosine, mse_nrm=s.mse_nrm, cjk=s.cjk)


__all__ = [
    "NLA",
    "Encoded",
    "Sample",
    "TokenExplanation",
    "VectorExplanation",
    "as_vectors",
    "default_nla_dir",
    "encode_input",
    "load_vector_file",
    "local_checkpoint",
    "resolve_nla_paths",
    "sidecar_baseline",
]
