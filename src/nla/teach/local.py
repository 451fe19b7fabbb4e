"""Teachers that run a local HF model: the base class, and :class:`HFTeacher` (batched greedy answers
of a local chat model, by default the embedded SmolLM2-135M-Instruct)."""

from __future__ import annotations

from typing import Any

from nla.core.text import CLOSE, OPEN, readable
from nla.models.target import DEFAULT_TARGET, Target, load_target
from nla.teach.base import INSTRUCTION_VERSION, TeacherOptions, build_prompt


class LocalTeacher:
    """A teacher that runs a local HF model (loaded on first use unless a Target is given)."""

    parallel = False

    def __init__(self, opts: TeacherOptions | None = None, target: Target | None = None) -> None:
        self.opts, self._target = opts or TeacherOptions(), target
        self.model = target.name if target is not None else (self.opts.model or DEFAULT_TARGET)

    def _load(self) -> Target:
        if self._target is None:
            self._target = load_target(self.model, device=self.opts.device)
        return self._target


class HFTeacher(LocalTeacher):
    """A local HF chat model (default: the embedded SmolLM2-135M-Instruct), batched greedy generation."""

    name, version = "hf", INSTRUCTION_VERSION

    def __init__(self, opts: TeacherOptions | None = None, target: Target | None = None) -> None:
        super().__init__(opts, target)
        self.max_batch = max(1, self.opts.batch_size)

    def answer(self, contexts: list[str]) -> list[str | None]:
        import torch

        t = self._load()
        tok = t.tokenizer
        # special tokens inside a context would be read as real chat markup: show them as [name]
        prompts = [build_prompt(readable(c, special_strings(tok), escape_newlines=False)) for c in contexts]
        if t.chat_template:
            prompts = [
                tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in prompts
            ]
        prompts = [p + OPEN for p in prompts]  # prefill the opening tag: small models then keep the format
        side, tok.padding_side = tok.padding_side, "left"
        try:
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=not t.chat_template).to(t.device)
        finally:
            tok.padding_side = side
        with torch.no_grad():
            out = t.model.generate(  # (B, T + new)
                **enc, max_new_tokens=self.opts.max_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                stop_strings=[CLOSE], tokenizer=tok,
            )  # fmt: skip
        new = out[:, enc["input_ids"].shape[1] :]  # (B, new)
        return [OPEN + tok.decode(row, skip_special_tokens=True) for row in new]


def special_ids(tok: Any) -> set[int]:
    """Ids of all special tokens (declared special or added as special)."""
    found = set(getattr(tok, "all_special_ids", []) or [])
    return found | {i for i, a in getattr(tok, "added_tokens_decoder", {}).items() if getattr(a, "special", False)}


def special_strings(tok: Any) -> list[str]:
    """All special-token strings of a tokenizer (longest first)."""
    found = set(getattr(tok, "all_special_tokens", []) or [])
    for added in getattr(tok, "added_tokens_decoder", {}).values():
        if getattr(added, "special", False):
            found.add(added.content)
    return sorted((s for s in found if s), key=len, reverse=True)
