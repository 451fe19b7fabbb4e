"""The activation verbalizer (AV): a fine-tuned copy of the target LM that explains a vector in words.

The prompt is the chat template around an instruction holding ``<concept>M</concept>``; the marker's
embedding is replaced by the vector rescaled to ``injection_scale`` (see :mod:`nla.core.inject`). The AV
answers ``<explanation>...</explanation>`` followed by its end-of-turn token.

>>> from nla.models.target import load_target                                   # doctest: +SKIP
>>> av = ActivationVerbalizer.from_target(load_target(), injection_scale=250.0, layer=20)  # doctest: +SKIP
>>> av.generate(torch.randn(2, 576), max_new_tokens=40)                  # doctest: +SKIP
[['<explanation>...'], ['...']]
>>> av.save_pretrained("runs/av")                                        # doctest: +SKIP
>>> av = ActivationVerbalizer.from_pretrained("runs/av")                 # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nla.common.errors import NLAError
from nla.common.meta import (
    MODEL_SCHEMA_VERSION,
    MODEL_SIDECAR,
    base_model,
    extraction_scale,
    layer_index,
    read_model_sidecar,
    template,
    write_sidecar,
)
from nla.common.paths import atomic_dir
from nla.core.inject import Injector, Marker, chat_prompt_ids, choose_marker, fill_template, verify_marker
from nla.core.modules import text_config
from nla.core.text import cjk_fraction
from nla.generation import GREEDY, Backend, Request, Slot, get_backend
from nla.generation.rules import DistinctItems
from nla.models.lora import ADAPTER_CONFIG, is_lora, load_adapter, merge_adapter, merged_copy, save_adapter
from nla.models.sequences import (
    AVBatch,
    Responses,
    _eval_mode,
    end_of_turn_id,
    on_batch,
)
from nla.models.target import load_target, load_tokenizer

log = logging.getLogger(__name__)

DEFAULT_AV_TEMPLATE = (
    "Here is a hidden concept taken from inside a language model: <concept>{injection_char}</concept>. "
    "Describe it as 2-3 short features the model would use to predict what comes next, "
    "inside <explanation></explanation> tags."
)
CJK_FAILURE_THRESHOLD = 0.3  # mean CJK share above which injection has most likely failed


def default_injection_scale(vectors: torch.Tensor) -> float:  # (N, d)
    """A round number strictly above the mean norm of the training vectors.

    Rule: step = half the power of ten below the mean norm m (m=236 -> step 50), and the scale is the
    next multiple of step strictly above m: 236 -> 250, 250 -> 300, 7.3 -> 7.5, 73000 -> 75000.
    """
    norms = vectors.float().norm(dim=-1)
    norms = norms[torch.isfinite(norms) & (norms > 0)]
    if norms.numel() == 0:
        raise NLAError("cannot derive an injection scale: no finite non-zero vectors")
    m = float(norms.mean())
    step = 10 ** math.floor(math.log10(m)) / 2
    return float((math.floor(m / step) + 1) * step)


def injection_failed(responses: Sequence[str], threshold: float = CJK_FAILURE_THRESHOLD) -> bool:
    """True when the responses look like a failed injection: the AV saw the raw marker and wrote CJK."""
    if not responses:
        return False
    return sum(cjk_fraction(r) for r in responses) / len(responses) > threshold


class ActivationVerbalizer:
    """An AV: ``model`` + ``tokenizer`` + the injection contract (marker, scale, template, layer)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        marker: Marker,
        injection_scale: float | None,
        template: str,
        layer: int,
        d_model: int,
        base_model: str,
        injection_mode: str = "replace",
        add_layer: int = 0,
    ) -> None:
        self.model, self.tokenizer, self.marker = model, tokenizer, marker
        self.injection_scale, self.template, self.layer = injection_scale, template, layer
        self.d_model, self.base_model = d_model, base_model
        self.injection_mode, self.add_layer = injection_mode, add_layer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.eot_id = end_of_turn_id(tokenizer)
        self.eval_meta: dict[str, Any] = {}  # sidecar ``eval`` block (e.g. baseline_mse of the training split)
        self.backend: Backend = get_backend("hf")  # what generates (nla.generation); swap for vllm on a GPU
        self.distinct_items = False  # decode with nla.generation.rules.DistinctItems
        self._prompt: list[int] | None = None
        self.prompt_ids()  # verify the marker now

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def from_target(
        cls,
        target: Any,
        *,
        injection_scale: float | None,
        layer: int,
        template: str = DEFAULT_AV_TEMPLATE,
        marker: Marker | None = None,
        corpus_texts: Sequence[str] | None = None,
        injection_mode: str = "replace",
        add_layer: int = 0,
    ) -> ActivationVerbalizer:
        """A fresh AV: a deep copy of ``target.model`` (the target itself is left untouched)."""
        target.check_layer(layer)
        if marker is None:
            marker = choose_marker(target.tokenizer, template, corpus_texts=corpus_texts)
        model = copy.deepcopy(target.model)
        return cls(
            model,
            copy.deepcopy(target.tokenizer),
            marker=marker,
            injection_scale=injection_scale,
            template=template,
            layer=layer,
            d_model=target.d_model,
            base_model=target.name,
            injection_mode=injection_mode,
            add_layer=add_layer,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt_ids(self) -> list[int]:
        """Chat template around the filled instruction, tokenised in one step; marker verified."""
        if self._prompt is None:
            ids = chat_prompt_ids(self.tokenizer, fill_template(self.template, self.marker.char))
            verify_marker(self.tokenizer, ids, self.marker)
            self._prompt = ids
        return list(self._prompt)

    def injector(self, vectors: torch.Tensor, *, once: bool = True) -> Injector:  # (B, d)
        return Injector(
            self.model,
            self.marker.token_id,
            vectors,
            self.injection_scale,
            mode=self.injection_mode,
            add_layer=self.add_layer,
            once=once,
        )

    def _check_vectors(self, vectors: torch.Tensor) -> torch.Tensor:  # (N, d) -> (N, d)
        if vectors.dim() != 2 or vectors.shape[1] != self.d_model:
            raise NLAError(f"expected vectors of shape (N, {self.d_model}), got {tuple(vectors.shape)}")
        return vectors.to(self.device, torch.float32)

    # ------------------------------------------------------------------------------ generation
    def for_inference(self) -> ActivationVerbalizer:
        """Merge a LoRA adapter into the weights, in place, for generation only (no training after this):
        one matrix per linear map instead of three (10-25% faster greedy decoding at batch 16, timed on a
        busy CPU). The merged weights round differently in the last bits, which could flip a greedy token at
        a floating-point tie (as batching can); none did on 64 held-out vectors (docs/throughput.md).
        On CPU the linear weights are then stored column-major for decoding's small GEMMs
        (:func:`nla.generation.hf.column_major_linears`: the same products, bit for bit). Returns ``self``."""
        from nla.generation.hf import column_major_linears

        if is_lora(self.model):
            self.model = self.model.merge_and_unload()
            self.model.eval()
        column_major_linears(self.model)
        return self

    def stop_ids(self) -> tuple[int, ...]:
        """Tokens that end an answer: the end-of-turn token and EOS."""
        eos = self.tokenizer.eos_token_id
        return tuple(sorted({self.eot_id, *([eos] if eos is not None else [])}))

    @torch.no_grad()
    def sample(
        self,
        vectors: torch.Tensor,  # (N, d)
        *,
        max_new_tokens: int = 150,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        num_samples: int = 1,
        batch_size: int = 16,
        seed: int | None = None,
    ) -> Responses:
        """``num_samples`` responses per vector, flat (row ``i * S + j`` is sample j of vector i), with
        their token ids and truncation flags. The vector is injected in the prefill only. Sampling is
        plain (top-k off; ``top_p`` 1.0 by default), so the raw-logit log-probs at ``temperature`` are the
        sampling distribution. ``seed`` makes sampling reproducible without touching the global RNG (each
        row draws from its own generator, so a row's answer does not depend on its batch). ``batch_size``
        answers are decoded together. Inside :func:`generation_progress`, each finished batch is reported
        to its callback."""
        slot = Slot(temperature=temperature, top_p=top_p) if do_sample else GREEDY
        return self.sample_slots(
            vectors, [slot] * num_samples, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed
        )

    @torch.no_grad()
    def sample_slots(
        self,
        vectors: torch.Tensor,  # (N, d)
        slots: Sequence[Slot],
        *,
        max_new_tokens: int = 150,
        batch_size: int = 16,
        seed: int | None = None,
    ) -> Responses:
        """One response per vector and slot, flat (row ``i * S + j`` answers vector i with ``slots[j]``):
        e.g. best-of-K's ``[GREEDY, Slot(0.7), ...]``, whose K answers share one prefill per vector."""
        from nla.generation.base import check_slots

        vectors = self._check_vectors(vectors)
        if max_new_tokens < 1 or batch_size < 1:
            raise NLAError("max_new_tokens and batch_size must be >= 1")
        stops = self.stop_ids()
        rule = DistinctItems.for_tokenizer(self.tokenizer) if self.distinct_items else None
        request = Request(vectors, check_slots(slots), max_new_tokens, stops, batch_size, seed, rule)
        with _eval_mode(self.model):
            rows = self.backend.generate(self, request, on_batch())
        out_ids: list[list[int]] = []
        texts: list[str] = []
        truncated: list[bool] = []
        for row in rows:
            stop = next((i for i, t in enumerate(row) if t in stops), None)
            kept = row[: stop + 1] if stop is not None else row[:max_new_tokens]
            out_ids.append(kept)
            texts.append(self.tokenizer.decode(kept[:-1] if stop is not None else kept, skip_special_tokens=True))
            truncated.append(stop is None)
        if injection_failed(texts):
            log.warning("AV outputs are mostly CJK: the injection has probably failed (marker seen raw)")
        return Responses(out_ids, texts, truncated)

    def generate(self, vectors: torch.Tensor, *, num_samples: int = 1, **kwargs: Any) -> list[list[str]]:  # (N, d)
        """``num_samples`` decoded responses per vector (end-of-turn and padding removed); the keyword
        arguments are those of :meth:`sample`."""
        texts = self.sample(vectors, num_samples=num_samples, **kwargs).texts
        return [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(texts) // num_samples)]

    # ------------------------------------------------------------------------------ scoring
    def response_ids(self, response: str, max_response_tokens: int | None = None) -> list[int]:
        """Tokens of a response as the AV should emit them: the text then the end-of-turn token."""
        ids = self.tokenizer.encode(response, add_special_tokens=False)
        if max_response_tokens is not None:
            ids = ids[: max(0, max_response_tokens - 1)]
        return [*ids, self.eot_id]

    def encode(
        self, vectors: torch.Tensor, responses: Sequence[str], *, max_response_tokens: int | None = None
    ) -> AVBatch:
        """Build a right-padded batch of prompt + response (vectors (N, d))."""
        return self.encode_tokens(vectors, [self.response_ids(r, max_response_tokens) for r in responses])

    def encode_tokens(
        self, vectors: torch.Tensor, responses: Sequence[Sequence[int]], *, device: torch.device | str | None = None
    ) -> AVBatch:  # vectors (N, d)
        """Like :meth:`encode` with pre-tokenised responses (each already ending with end-of-turn);
        the batch lands on ``device`` (default: the model's)."""
        vectors = self._check_vectors(vectors)
        if len(responses) != vectors.shape[0]:
            raise NLAError(f"{vectors.shape[0]} vectors but {len(responses)} responses")
        prompt = self.prompt_ids()
        p, r, n = len(prompt), max(len(x) for x in responses), len(responses)
        ids = torch.full((n, p + r), self.tokenizer.pad_token_id, dtype=torch.long)
        attn = torch.zeros((n, p + r), dtype=torch.long)
        rmask = torch.zeros((n, p + r), dtype=torch.bool)
        for i, x in enumerate(responses):
            ids[i, : p + len(x)] = torch.tensor([*prompt, *x])
            attn[i, : p + len(x)] = 1
            rmask[i, p : p + len(x)] = True
        return AVBatch(ids, attn, rmask, vectors.cpu(), p).to(self.device if device is None else device)

    def batch_logprobs(self, batch: AVBatch, *, model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs of the response tokens under the AV with injection (differentiable).

        Returns (token_logprobs (B, R), mask (B, R)) where column j is response token j (0 where the mask
        is). ``model`` is the module to call (e.g. a distributed wrapper of ``self.model``); the hooks sit on
        ``self.model``. The log-softmax runs over the vocabulary as the last dimension, on the response
        tokens only (no padding): a (B, V, R) layout ran 3-3.5x slower on CPU (forward + backward; with
        Gemma's 262,144-token vocabulary it was two fifths of a bf16 AV-SFT step).
        """
        p, t = batch.prompt_len, batch.input_ids.shape[1]
        r = t - p
        with self.injector(batch.vectors):
            out = (model or self.model)(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, logits_to_keep=r + 1
            )
        logits = out.logits[:, -(r + 1) : -1]  # (B, R, V): predicts tokens p .. t-1
        mask = batch.response_mask[:, p:]  # (B, R)
        real = mask.reshape(-1)
        picked = logits.reshape(-1, logits.shape[-1])[real].float()  # (N, V): the response tokens only
        logp = logits.new_zeros(mask.shape, dtype=torch.float32)  # (B, R)
        logp[mask] = -F.cross_entropy(picked, batch.input_ids[:, p:].reshape(-1)[real], reduction="none")
        return logp, mask

    def sft_loss(self, batch: AVBatch, *, model: nn.Module | None = None) -> torch.Tensor:  # ()
        """Next-token cross-entropy on response tokens only, averaged over all response tokens."""
        logp, mask = self.batch_logprobs(batch, model=model)
        return -logp.sum() / mask.sum().clamp(min=1)

    def response_logprobs(self, vectors: torch.Tensor, responses: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(token_logprobs (N, R), mask (N, R)) of ``responses`` (each ending with end-of-turn)."""
        return self.batch_logprobs(self.encode(vectors, responses))

    def nll(self, vectors: torch.Tensor, responses: Sequence[str]) -> torch.Tensor:  # (N, d) -> (N,)
        """Mean NLL per response token of each response given its vector."""
        logp, mask = self.response_logprobs(vectors, responses)
        return -logp.sum(-1) / mask.sum(-1).clamp(min=1)

    # ------------------------------------------------------------------------------ persistence
    def meta(self) -> dict[str, Any]:
        """The ``nla_meta.yaml`` of this AV; scales are numbers (the official readers call ``float()``)."""
        return {
            "kind": "nla_model",
            "schema_version": MODEL_SCHEMA_VERSION,
            "role": "av",
            "d_model": self.d_model,
            "extraction": {
                "base_model": self.base_model,
                "layer_index": self.layer,
                "injection_scale": None if self.injection_scale is None else float(self.injection_scale),
                "mse_scale": math.sqrt(self.d_model),
            },
            "tokens": {
                "injection_char": self.marker.char,
                "injection_token_id": self.marker.token_id,
                "injection_left_neighbor_id": self.marker.left_neighbor_id,
                "injection_right_neighbor_id": self.marker.right_neighbor_id,
            },
            "prompt_templates": {"av": self.template},
            **({"eval": dict(self.eval_meta)} if self.eval_meta else {}),
        }

    def save_pretrained(self, path: str | Path, *, merge_lora: bool = False) -> Path:
        """Write the official layout: HF model dir + tokenizer + ``nla_meta.yaml`` (atomically).

        A LoRA model is saved as its adapter only (``adapter: true``; the base weights are
        ``extraction.base_model``, which must be loadable by :func:`nla.models.target.load_target`) unless
        ``merge_lora``, which writes merged full weights (the live model keeps its adapter).
        """
        path = Path(path)
        meta = self.meta()
        if self.injection_mode != "replace":
            meta["injection"] = {"mode": self.injection_mode, "add_layer": self.add_layer}
        with atomic_dir(path) as tmp:
            if is_lora(self.model) and merge_lora:
                merged_copy(self.model).save_pretrained(tmp, safe_serialization=True)
            elif is_lora(self.model):
                save_adapter(self.model, tmp)
                meta["adapter"] = True
            else:
                self.model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            write_sidecar(tmp / MODEL_SIDECAR, meta)
        log.info("saved AV to %s", path)
        return path

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
        merged: bool = False,
    ) -> ActivationVerbalizer:
        """Load an AV checkpoint (ours or official; ``role: av|actor``); token ids are asserted. ``merged``:
        a LoRA adapter is merged into the weights as it loads (:func:`nla.models.lora.merge_adapter`; for
        inference: nothing left to train), else it stays a peft adapter."""
        from transformers import AutoModelForCausalLM

        path = Path(path)
        meta = read_model_sidecar(path)
        role = meta.get("role", "av")
        if role not in ("av", "actor"):
            raise NLAError(f"{path} holds an NLA {role!r} checkpoint, not an AV (role av/actor)")
        tmpl = template(meta, "av")
        if tmpl is None:
            raise NLAError(f"{path}/{MODEL_SIDECAR} has no prompt_templates.av (or .actor)")
        ext = meta.get("extraction") or {}
        toks = meta.get("tokens") or {}
        try:
            d_model = int(meta["d_model"])
            marker = Marker.from_tokens(toks)
        except (KeyError, TypeError, ValueError) as e:
            raise NLAError(f"{path}/{MODEL_SIDECAR} lacks a valid d_model or tokens.* entry: {e}") from e
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        base = base_model(meta)  # extraction.base_model, else the official base_checkpoint
        has_tok = any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
        if not has_tok and not base:
            raise NLAError(f"{path} has no tokenizer and its sidecar names no base model to take one from")
        tokenizer = load_tokenizer(str(path) if has_tok else base)
        if (path / ADAPTER_CONFIG).exists():
            base = ext.get("base_model")
            if not base:
                raise NLAError(f"{path} is a LoRA adapter but its sidecar names no extraction.base_model")
            attach = merge_adapter if merged else load_adapter
            model = attach(load_target(str(base), dtype=dtype, device=device).model, path)
        else:
            try:
                model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
            except (OSError, ValueError) as e:
                raise NLAError(f"cannot load the AV model in {path}: {e}") from e
        model.to(device).eval()
        cfg = text_config(model)
        if int(cfg.hidden_size) != d_model:
            raise NLAError(f"{path}: sidecar d_model {d_model} but the model's hidden size is {cfg.hidden_size}")
        inj = meta.get("injection") or {}
        av = cls(
            model,
            tokenizer,
            marker=marker,
            injection_scale=extraction_scale(meta, "injection_scale"),
            template=tmpl,
            layer=-1 if (layer := layer_index(meta)) is None else layer,  # from wherever the sidecar states it
            d_model=d_model,
            base_model=base_model(meta),
            injection_mode=str(inj.get("mode", "replace")),
            add_layer=int(inj.get("add_layer", 0)),
        )
        av.eval_meta = dict(meta.get("eval") or {})
        return av


__all__ = ["DEFAULT_AV_TEMPLATE", "ActivationVerbalizer", "default_injection_scale", "injection_failed"]
