"""The plain-torch backend: a hand-rolled decoding loop over any HF causal LM, with the AV's injection hook.

What it saves over ``model.generate`` on the AV's workload (every answer has the same prompt; only the
vector injected at the marker differs):

1. **Shared prefix.** The prompt tokens before the marker do not depend on the vector: their KV cache is
   computed once per request (batch 1) and copied into every batch.
2. **One prefill per vector.** The tokens from the marker on are run once per vector (with the injection);
   the vector's S slots (best-of-K: greedy + K-1 samples; RL: the group) start from copies of that cache.
3. **Finished answers leave the batch.** A row that emitted a stop token (or hit the cap) is dropped from
   the cache, so later steps run on the rows still writing. Every prompt has the same length, so no row
   ever needs padding or an attention mask.
4. **Logits of the last position only**, in prefill and decoding; sampling per row with its own generator
   (:mod:`nla.core.sampling`), so dropping rows never changes another row's draw. The LM head gets that
   position as a contiguous tensor (:func:`contiguous_head_input`): in bf16 on CPU, torch multiplied the
   strided slice by a batch-expanded copy of the head (one 335 MB copy per row for Gemma's vocabulary).
5. **Column-major weights on CPU** (:func:`column_major_linears`, applied by
   ``ActivationVerbalizer.for_inference``): a decoding step multiplies a few rows by every weight matrix,
   and the CPU GEMM of ``x @ W.T`` runs 1.1-1.7x faster when ``W.T`` is contiguous (timed at batch 25 on
   SmolLM2's shapes); the product is the same, bit for bit.

Greedy answers are those of ``model.generate`` on the same batch up to floating-point ties (the batch's
matrix shapes differ, so the last bits of a logit can): ``bench/same_greedy.py`` checks them on real vectors.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from nla.core.sampling import next_tokens, row_seed
from nla.generation.base import Request, group_batches, register


def _cache_kwarg(model: nn.Module) -> str:
    """The name under which this transformers version's forward takes the KV cache."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(type(base).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@functools.cache
def _preallocated_layer_class() -> type | None:
    """A ``DynamicLayer`` that writes new keys/values into a buffer allocated once (``capacity`` positions)
    and returns views of it, instead of concatenating the whole cache at every step (an O(T) copy per
    step and layer). None where this transformers version has no per-layer caches."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None

    class PreallocatedLayer(DynamicLayer):
        capacity = 0  # positions to allocate at the first update (at least what it brings)

        def _views(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
            self.length = length
            self.keys, self.values = self._k[:, :, :length], self._v[:, :, :length]
            return self.keys, self.values

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self.length = 0
            end = self.length + key_states.shape[-2]
            if self.length == 0 or end > self._k.shape[-2]:  # first write, or past the buffer: grow it
                cap = max(end, self.capacity, 2 * self.length)
                k = key_states.new_empty((*key_states.shape[:2], cap, key_states.shape[-1]))
                v = value_states.new_empty((*value_states.shape[:2], cap, value_states.shape[-1]))
                if self.length:
                    k[:, :, : self.length], v[:, :, : self.length] = self.keys, self.values
                self._k, self._v = k, v
            self._k[:, :, self.length : end] = key_states
            self._v[:, :, self.length : end] = value_states
            return self._views(end)

        def _rebuild(self, keys: torch.Tensor, values: torch.Tensor) -> None:
            """New buffers holding ``keys``/``values`` (B', H, length, D) first; the rest stays unwritten
            (untouched pages cost no memory)."""
            k, v = (
                keys.new_empty((keys.shape[0], *self._k.shape[1:])),
                values.new_empty((values.shape[0], *self._v.shape[1:])),
            )
            k[:, :, : self.length], v[:, :, : self.length] = keys, values
            self._k, self._v = k, v
            self._views(self.length)

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.is_initialized and self.length:
                self._rebuild(
                    self.keys.repeat_interleave(repeats, dim=0), self.values.repeat_interleave(repeats, dim=0)
                )

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            """Keep the rows ``indices`` (finished answers leave): they are gathered (a copy of the written
            positions only) and written back to the front of the SAME buffers, so no second buffer is
            allocated beside the first (which set the peak memory of a batch of 64)."""
            if self.is_initialized and self.length:
                n, keys, values = indices.shape[0], self.keys[indices], self.values[indices]
                self._k, self._v = self._k[:n], self._v[:n]
                self._k[:, :, : self.length], self._v[:, :, : self.length] = keys, values
                self._views(self.length)

    return PreallocatedLayer


def _new_cache(model: nn.Module, capacity: int = 0) -> Any:
    """A KV cache for ``model``; its full-attention layers preallocate ``capacity`` positions (sliding-window
    layers, e.g. Gemma's, keep transformers' own class)."""
    from transformers import DynamicCache

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        cache = DynamicCache(config=base.config)
    except TypeError:  # older transformers: no config argument
        return DynamicCache()
    layers = getattr(cache, "layers", None)
    preallocated = _preallocated_layer_class()
    if preallocated is not None and layers:
        from transformers.cache_utils import DynamicLayer

        for i, layer in enumerate(layers):
            if type(layer) is DynamicLayer:
                layers[i] = preallocated()
                layers[i].capacity = capacity
    return cache


def column_major_linears(model: nn.Module) -> int:
    """Store every ``nn.Linear`` weight of ``model`` (on CPU) as the transpose of a contiguous (in, out)
    matrix: the same values and shape, so ``F.linear`` gives the same result, but its GEMM reads ``W.T``
    row by row. Weights shared with another module (a LM head tied to the input embeddings, which looks up
    rows) keep their layout. Every other CPU parameter is copied too, so that no tensor is left in the
    checkpoint's memory map: the map is then released (after a LoRA merge its pages are private copies,
    which would otherwise stay resident beside the new layout). For inference only. Returns how many
    weights were relaid."""
    shared = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    relaid: set[int] = set()
    for module in model.modules():
        w = getattr(module, "weight", None)
        if not isinstance(module, nn.Linear) or w is None or w.device.type != "cpu" or id(w) in shared:
            continue
        if w.dim() == 2 and w.is_floating_point() and w.is_contiguous():
            w.data = w.data.t().contiguous().t()
            relaid.add(id(w))
    for p in model.parameters():
        if id(p) not in relaid and p.device.type == "cpu":
            p.data = p.data.clone()
    return len(relaid)


@contextmanager
def contiguous_head_input(model: nn.Module) -> Iterator[None]:
    """While active, the LM head of ``model`` multiplies a contiguous copy of its input. transformers slices
    the last position (``logits_to_keep=1``) out of the prefill's hidden states, a strided (B, 1, d) view; for
    bf16 on CPU ``F.linear`` then ran a batched matmul against the head expanded to (B, d, V), copying the
    whole head once per row (12 s and 2.8 GB for 8 Gemma rows). fp32 multiplies the same numbers either way."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield
        return
    dense = torch.contiguous_format  # .contiguous() keeps the strided view of a batch of one
    handle = head.register_forward_pre_hook(lambda _m, args: (args[0].clone(memory_format=dense), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


class HFBackend:
    """Decode with the AV's own torch model (any device, any dtype)."""

    name = "hf"

    def _forward(self, model: nn.Module, ids: torch.Tensor, cache: Any) -> torch.Tensor:  # (B, T) -> (B, V)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{_cache_kwarg(model): cache})
        return out.logits[:, -1, :].float()

    @torch.no_grad()
    def generate(self, av: Any, request: Request, on_rows: Callable[[int], None] | None = None) -> list[list[int]]:
        model = av.model
        prompt = av.prompt_ids()
        m = prompt.index(av.marker.token_id)  # verified: exactly once, never first
        base_seed = request.seed
        if base_seed is None and not all(sl.greedy for sl in request.slots):
            base_seed = int(torch.randint(0, 2**62, ()))
        with contiguous_head_input(model):
            return self._generate(av, model, prompt, m, request, base_seed, on_rows)

    def _generate(
        self,
        av: Any,
        model: nn.Module,
        prompt: list[int],
        m: int,  # the marker's position in the prompt
        request: Request,
        base_seed: int | None,
        on_rows: Callable[[int], None] | None,
    ) -> list[list[int]]:
        device = next(model.parameters()).device
        s = len(request.slots)
        prefix = _new_cache(model, len(prompt) + request.max_new_tokens)  # the prompt before the marker, batch 1
        self._forward(model, torch.tensor([prompt[:m]], device=device), prefix)
        out: list[list[int]] = []
        for group in group_batches(request.vectors.shape[0], s, request.batch_size):
            vecs = request.vectors[group.start : group.stop]  # (n, d)
            rows = [i * s + j for i in group for j in range(s)]
            gens = [None] * len(rows)
            if base_seed is not None:
                gens = [
                    None if request.slots[r % s].greedy else torch.Generator(device).manual_seed(row_seed(base_seed, r))
                    for r in rows
                ]
            out += self._batch(av, model, copy.deepcopy(prefix), prompt[m:], vecs, request, gens)
            if on_rows is not None:
                on_rows(len(rows))
        return out

    def _batch(
        self,
        av: Any,
        model: nn.Module,
        cache: Any,  # the prefix's cache, batch 1 (consumed)
        suffix_ids: list[int],  # the prompt from the marker on
        vecs: torch.Tensor,  # (n, d)
        request: Request,
        gens: list[torch.Generator | None],
    ) -> list[list[int]]:
        n, s = vecs.shape[0], len(request.slots)
        device = vecs.device
        cache.batch_repeat_interleave(n)
        suffix = torch.tensor([suffix_ids] * n, device=device)  # (n, P - m): starts with the marker
        with av.injector(vecs) as inj:
            logits = self._forward(model, suffix, cache)  # (n, V)
        if inj.calls != 1:
            raise RuntimeError(f"injection ran {inj.calls} times in the prefill; expected once")
        if s > 1:
            cache.batch_repeat_interleave(s)
            logits = logits.repeat_interleave(s, dim=0)  # (n*s, V)
        temps = [sl.temperature for _ in range(n) for sl in request.slots]
        top_ps = [sl.top_p for _ in range(n) for sl in request.slots]
        live = list(range(n * s))  # batch row -> answer index
        answers: list[list[int]] = [[] for _ in live]
        stops = set(request.stop_ids)
        states = [request.rule.start() for _ in live] if request.rule is not None else None
        for step in range(request.max_new_tokens):
            if states is not None:
                for b, r in enumerate(live):
                    if banned := states[r].banned:
                        logits[b, banned] = float("-inf")
            tok = next_tokens(logits, [temps[r] for r in live], [top_ps[r] for r in live], [gens[r] for r in live])
            keep = []
            for b, (r, t) in enumerate(zip(live, tok.tolist(), strict=True)):
                answers[r].append(t)
                if states is not None:
                    states[r].push(t)
                if t not in stops:
                    keep.append(b)
            if not keep or step + 1 == request.max_new_tokens:
                break
            ids = tok[:, None]  # (B, 1)
            if len(keep) < len(live):
                idx = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx)
                ids = ids[idx]
                live = [live[b] for b in keep]
            logits = self._forward(model, ids, cache)  # (B', V)
        return answers


register("hf", HFBackend)

__all__ = ["HFBackend", "column_major_linears", "contiguous_head_input"]
