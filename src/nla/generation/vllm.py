"""The vLLM backend: the AV prompt sent as ``prompt_embeds`` (how Neuronpedia's NLA server runs its AV).

Each vector becomes one prompt of embeddings: the AV's input embeddings of the prompt tokens (the embedding
module's output, so any scaling inside it, e.g. Gemma's sqrt(d), is already applied), with the marker row
replaced by ``normalize_to(v, injection_scale)`` (:func:`nla.core.inject.inject`, the same value the HF
path injects). Never send ``input_ids`` beside the embeddings (positions misalign), and keep prefix caching
off (two prompts differ only inside, at the marker). Only ``replace`` injection is possible this way.

The engine is anything with vLLM's ``LLM.generate(prompts, sampling_params)`` shape: a real
``vllm.LLM(model=<merged AV dir>, enable_prompt_embeds=True, enable_prefix_caching=False)`` (built lazily
from the AV when none is given: the AV, LoRA merged, is saved to a temporary directory), or a fake one in
tests. ``sampling_params`` is built by ``params_factory`` (default: ``vllm.SamplingParams``) from
``temperature``, ``top_p``, ``max_tokens``, ``stop_token_ids``, ``seed``, ``n``.

Not tested on a GPU in the session that wrote it (none was lent); tests drive it with a fake engine.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nla.common.errors import NLAError
from nla.core.inject import inject
from nla.core.sampling import row_seed
from nla.generation.base import Request, register


def prompt_embeds(av: Any, vectors: torch.Tensor) -> torch.Tensor:  # (N, d) -> (N, P, d)
    """The AV prompt as input embeddings, one row per vector, each vector injected at the marker."""
    if getattr(av, "injection_mode", "replace") != "replace":
        raise NLAError("the vLLM backend injects by replacing the marker's embedding; this AV adds at a layer")
    prompt = av.prompt_ids()
    embed = av.model.get_input_embeddings()
    device = next(embed.parameters()).device
    with torch.no_grad():
        base = embed(torch.tensor([prompt], device=device))  # (1, P, d)
        rows = base.expand(vectors.shape[0], -1, -1)  # (N, P, d)
        pos = torch.full((vectors.shape[0],), prompt.index(av.marker.token_id), dtype=torch.long)
        return inject(rows, pos, vectors.to(device), av.injection_scale)


def _default_params(**kw: Any) -> Any:
    from vllm import SamplingParams

    return SamplingParams(**kw)


def _default_engine(av: Any) -> Any:
    try:
        from vllm import LLM
    except ImportError as e:
        raise NLAError("the vllm backend needs the vllm package (pip install vllm, on a GPU machine)") from e
    tmp = Path(tempfile.mkdtemp(prefix="nla-vllm-av-"))
    av.save_pretrained(tmp / "av", merge_lora=True)
    return LLM(model=str(tmp / "av"), enable_prompt_embeds=True, enable_prefix_caching=False, dtype="auto")


class VLLMBackend:
    """Generate through a vLLM engine fed ``prompt_embeds``."""

    name = "vllm"

    def __init__(
        self,
        engine: Any = None,
        params_factory: Callable[..., Any] | None = None,
        engine_factory: Callable[[Any], Any] | None = None,
    ) -> None:
        self.engine = engine
        self.params_factory = params_factory or _default_params
        self.engine_factory = engine_factory or _default_engine

    def sync(self, av: Any) -> None:
        """Give the engine the AV's current weights (after an RL update); the engine must offer
        ``load_weights(iterable of (name, tensor))``."""
        if self.engine is None:
            return
        load = getattr(self.engine, "load_weights", None)
        if load is None:
            raise NLAError("this vLLM engine cannot take new weights (no load_weights): rebuild the backend")
        load((name, p.detach()) for name, p in av.model.named_parameters())

    def generate(self, av: Any, request: Request, on_rows: Callable[[int], None] | None = None) -> list[list[int]]:
        if request.rule is not None:
            raise NLAError("the vllm backend has no decoding rules (e.g. av.distinct_items); use the hf backend")
        if self.engine is None:
            self.engine = self.engine_factory(av)
        embeds = prompt_embeds(av, request.vectors).cpu()  # (N, P, d)
        seed = request.seed
        if seed is None and not all(s.greedy for s in request.slots):
            seed = int(torch.randint(0, 2**62, ()))
        s = len(request.slots)
        prompts, params = [], []
        for i in range(embeds.shape[0]):
            for j, slot in enumerate(request.slots):
                prompts.append({"prompt_embeds": embeds[i]})
                params.append(
                    self.params_factory(
                        temperature=max(0.0, slot.temperature),
                        top_p=slot.top_p,
                        max_tokens=request.max_new_tokens,
                        stop_token_ids=list(request.stop_ids),
                        seed=None if slot.greedy or seed is None else row_seed(seed, i * s + j) % (2**31 - 1),
                        n=1,
                    )
                )
        results = self.engine.generate(prompts, params)
        if len(results) != len(prompts):
            raise RuntimeError(f"the vLLM engine returned {len(results)} results for {len(prompts)} prompts")
        out = [_answer_ids(r.outputs[0], request) for r in results]
        if on_rows is not None:
            on_rows(len(out))
        return out


def _answer_ids(completion: Any, request: Request) -> list[int]:
    """The completion's token ids, ending with its stop token when it stopped (vLLM may leave it out)."""
    ids = [int(t) for t in completion.token_ids][: request.max_new_tokens]
    if getattr(completion, "finish_reason", None) == "stop" and (not ids or ids[-1] not in request.stop_ids):
        reason = getattr(completion, "stop_reason", None)
        ids.append(int(reason) if isinstance(reason, int) else request.stop_ids[0])
    return ids


register("vllm", VLLMBackend)

__all__ = ["VLLMBackend", "prompt_embeds"]
