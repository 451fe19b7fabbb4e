"""An SGLang-compatible ``/generate`` endpoint with ``input_embeds``, on plain HF generation (CPU is fine).

The official NLA inference client (``nla_inference.py`` ``NLAClient``) builds the AV prompt's embeddings
itself (marker row replaced by the rescaled vector) and POSTs them to an SGLang server's ``/generate``.
This serves the same wire protocol from any AV checkpoint nla loads, so that client runs with no GPU engine:

    nla serve-sglang --av nla-official/av --port 30000

Request (JSON): ``{"input_embeds": [[...d floats...] x T], "sampling_params": {...}}``; a list of such
``[T, d]`` arrays is a batch. Sampling parameters: ``temperature`` (0 = greedy), ``max_new_tokens``,
``top_p``, ``top_k`` (-1 = off), ``stop_token_ids``, ``ignore_eos``, ``skip_special_tokens``. Answer:
``{"text", "output_ids", "meta_info": {"prompt_tokens", "completion_tokens", "finish_reason"}}`` (a list
for a batch); the stop token ends the output and is not part of it, as in SGLang. ``input_ids`` with
``input_embeds`` is refused (SGLang would misalign positions); ``input_ids`` or ``text`` alone are
generated from as usual. No prefix cache is kept, so different embeddings never alias.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from fastapi import FastAPI, Request  # at module level: FastAPI resolves the handler's annotations here
from fastapi.responses import JSONResponse
from torch import nn

from nla.common.errors import NLAError

log = logging.getLogger(__name__)

MAX_NEW_TOKENS_LIMIT = 4096


@dataclass
class Sampling:
    """The SGLang ``sampling_params`` this endpoint honours (defaults as in SGLang)."""

    temperature: float = 1.0
    max_new_tokens: int = 128
    top_p: float = 1.0
    top_k: int = -1
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    seed: int | None = None

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> Sampling:
        """From a request's ``sampling_params``; unknown keys are ignored (as SGLang's many others are)."""
        raw = dict(raw or {})
        try:
            s = cls(
                temperature=float(raw.get("temperature", 1.0)),
                max_new_tokens=int(raw.get("max_new_tokens", 128)),
                top_p=float(raw.get("top_p", 1.0)),
                top_k=int(raw.get("top_k", -1)),
                stop_token_ids=[int(i) for i in raw.get("stop_token_ids") or []],
                ignore_eos=bool(raw.get("ignore_eos", False)),
                skip_special_tokens=bool(raw.get("skip_special_tokens", True)),
                seed=None if raw.get("sampling_seed") is None else int(raw["sampling_seed"]),
            )
        except (TypeError, ValueError) as e:
            raise NLAError(f"bad sampling_params: {e}") from e
        if s.temperature < 0 or not 0 < s.top_p <= 1 or not 1 <= s.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise NLAError(f"sampling_params out of range: {raw}")
        return s


def embeds_batch(raw: Any, d_model: int) -> tuple[list[torch.Tensor], bool]:
    """``input_embeds`` as a list of ``(T, d)`` float32 tensors, and whether it was ONE ``[T, d]`` array
    (not a batch: a list of them)."""
    if not isinstance(raw, list) or not raw or not isinstance(raw[0], list) or not raw[0]:
        raise NLAError("input_embeds must be a [T, d] array or a list of them")
    single = not isinstance(raw[0][0], list)
    try:
        batch = [torch.as_tensor(x, dtype=torch.float32) for x in ([raw] if single else raw)]
    except (TypeError, ValueError, RuntimeError) as e:
        raise NLAError(f"input_embeds must be a [T, d] array of numbers or a list of them: {e}") from e
    for e in batch:
        if e.dim() != 2 or e.shape[0] == 0 or e.shape[1] != d_model:
            raise NLAError(f"input_embeds rows must have d_model={d_model} values, got shape {list(e.shape)}")
        if not torch.isfinite(e).all():
            raise NLAError("input_embeds holds NaN or infinite values")
    return batch, single


def stop_ids(model: nn.Module, tokenizer: Any, sampling: Sampling) -> list[int]:
    """Token ids that end a generation: the model's and tokenizer's end-of-sequence ids, plus the request's."""
    ids: set[int] = set(sampling.stop_token_ids)
    if not sampling.ignore_eos:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids.update([eos] if isinstance(eos, int) else list(eos or []))
        if tokenizer.eos_token_id is not None:
            ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


@torch.no_grad()
def generate_from_embeds(
    model: nn.Module, tokenizer: Any, embeds: torch.Tensor, sampling: Sampling
) -> dict[str, Any]:  # embeds (T, d)
    """One SGLang-style completion of the prompt given as embeddings (the model's own dtype and device)."""
    p = next(model.parameters())
    x = embeds.to(p.device, p.dtype)[None]  # (1, T, d)
    stops = stop_ids(model, tokenizer, sampling)
    kwargs: dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens, eos_token_id=stops or None)
    kwargs["pad_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops or [0])[0]
    if sampling.temperature == 0:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        top_k = sampling.top_k if sampling.top_k > 0 else 0
        kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=top_k)
    rng = torch.random.fork_rng(devices=[p.device] if p.device.type == "cuda" else [])
    with rng:
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        mask = torch.ones(x.shape[:2], dtype=torch.long, device=p.device)
        out = model.generate(inputs_embeds=x, attention_mask=mask, **kwargs)
    new = [int(t) for t in out[0].tolist()]  # generate(inputs_embeds=...) returns only the new tokens
    stop_at = next((i for i, t in enumerate(new) if t in stops), None)
    kept = new if stop_at is None else new[:stop_at]
    text = tokenizer.decode(kept, skip_special_tokens=sampling.skip_special_tokens)
    reason: dict[str, Any] = {"type": "length", "length": len(kept)}
    if stop_at is not None:
        reason = {"type": "stop", "matched": new[stop_at]}
    return {
        "text": text,
        "output_ids": kept,
        "meta_info": {"prompt_tokens": int(x.shape[1]), "completion_tokens": len(kept), "finish_reason": reason},
    }


def create_app(model: nn.Module, tokenizer: Any, *, name: str = "nla") -> FastAPI:
    """The FastAPI app: ``POST /generate``, ``GET /health``, ``GET /get_model_info``."""
    app = FastAPI(title="nla serve-sglang", docs_url=None, redoc_url=None)
    lock = threading.Lock()  # one generation at a time: HF models are not thread-safe
    emb = model.get_input_embeddings()
    d_model = int(emb.weight.shape[1])

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/get_model_info")
    def model_info() -> dict[str, Any]:
        return {"model_path": name, "is_generation": True, "d_model": d_model}

    @app.post("/generate")
    async def generate(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        try:
            if not isinstance(body, dict):
                raise NLAError("the body must be a JSON object")
            sampling = Sampling.parse(body.get("sampling_params"))
            if body.get("input_embeds") is not None:
                if body.get("input_ids") is not None:
                    raise NLAError("send input_embeds OR input_ids, not both (positions would misalign)")
                batch, single = embeds_batch(body["input_embeds"], d_model)
            elif body.get("input_ids") is not None or body.get("text") is not None:
                ids = body.get("input_ids") or tokenizer(body["text"], add_special_tokens=False)["input_ids"]
                rows = ids if ids and isinstance(ids[0], list) else [ids]
                with torch.no_grad():
                    batch = [emb(torch.tensor(r, dtype=torch.long, device=emb.weight.device)).float() for r in rows]
                single = rows is not ids
            else:
                raise NLAError("the request needs input_embeds (or input_ids / text)")
            with lock:
                outs = [generate_from_embeds(model, tokenizer, e, sampling) for e in batch]
        except NLAError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        return JSONResponse(outs[0] if single else outs)

    return app


__all__ = ["Sampling", "create_app", "embeds_batch", "generate_from_embeds", "stop_ids"]
