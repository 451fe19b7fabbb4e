"""Datasets written by the official NLA code (kitft/natural_language_autoencoders ``nla/datagen``), read
the way nla reads its own.

The official stages write these parquet columns (each file with a ``<file>.nla_meta.yaml`` sidecar,
``kind: nla_dataset``, ``extraction.{base_model, d_model, layer_index}``):

- stage 0/1 (``stage: base``): ``activation_vector`` (raw), ``doc_id``, ``n_raw_tokens``,
  ``activation_layer``, ``detokenized_text_truncated``;
- stage 2: the same plus ``api_explanation`` (the teacher's text, no tags);
- stage 3 ``av_sft``: ``prompt`` (chat messages, the user turn holding the literal ``<INJECT>``) and
  ``response`` (``<explanation>\\n...\\n</explanation>``); the sidecar adds ``tokens.injection_*`` and
  ``prompt_templates.actor``;
- stage 3 ``ar_sft``: ``prompt`` (the AR template filled with the explanation); the sidecar adds
  ``prompt_templates.critic`` and ``tokens.critic_suffix_ids``;
- stage 3 ``rl``: ``prompt`` only.

:func:`explanation_texts` turns any of these into plain explanations (nla's ``explanation`` column comes
first); :func:`av_contract` gives the AV instruction and marker an official AV-SFT dataset was built with.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from nla.common import meta
from nla.common.errors import NLAError
from nla.core.inject import INJECTION_PLACEHOLDER, Marker

log = logging.getLogger(__name__)

INJECT_PLACEHOLDER = "<INJECT>"  # what official prompt columns hold where the marker goes
EXPLANATION_COLUMNS = ("explanation", "api_explanation")  # nla's name, then the official stage-2 name
TEXT_COLUMNS = (*EXPLANATION_COLUMNS, "prompt")  # every column explanation_texts can read


def unwrap(text: str, template: str) -> str | None:
    """The ``{explanation}`` part of ``text`` rendered from ``template``; None when ``text`` does not fit it."""
    if "{explanation}" not in template:
        raise NLAError(f"AR template must contain {{explanation}}: {template!r}")
    prefix, suffix = template.split("{explanation}", 1)
    if not (text.startswith(prefix) and text.endswith(suffix)) or len(text) < len(prefix) + len(suffix):
        return None
    return text[len(prefix) : len(text) - len(suffix)]


def explanation_texts(table: pa.Table, sidecar: dict[str, Any], where: str = "") -> tuple[list[str], str] | None:
    """Plain explanation text per row and where it came from, or None when the table has none.

    Order: ``explanation`` (nla), ``api_explanation`` (official stage 2), then an official AR-SFT ``prompt``
    (strings) with the sidecar's AR template (``prompt_templates.critic|ar``, else the default) removed.
    A prompt that does not fit the template gives '' (an empty explanation: the caller skips and counts
    it); when no prompt fits, the template is wrong and that is an error.
    """
    names = table.column_names
    for col in EXPLANATION_COLUMNS:
        if col in names:
            return [t if isinstance(t, str) else "" for t in table.column(col).to_pylist()], col
    if "prompt" not in names or not pa.types.is_string(table.schema.field("prompt").type):
        return None
    tmpl = meta.template(sidecar, "ar") or meta.DEFAULT_AR_TEMPLATE
    prompts = table.column("prompt").to_pylist()
    texts = [unwrap(p, tmpl) if isinstance(p, str) else None for p in prompts]
    fitted = sum(t is not None for t in texts)
    if prompts and fitted == 0:
        raise NLAError(f"{where or 'data'}: no prompt fits the AR template {tmpl!r} (official ar_sft prompt column)")
    if fitted < len(prompts):
        bad = len(prompts) - fitted
        log.warning("%s: %d of %d prompts do not fit the AR template %r", where, bad, len(prompts), tmpl)
    return [(t or "").strip() for t in texts], "prompt"


def _prompt_instruction(table: pa.Table, where: str) -> str | None:
    """The single user instruction of an official AV ``prompt`` column (chat messages), or None."""
    if "prompt" not in table.column_names:
        return None
    found: set[str] = set()
    for row in table.column("prompt").to_pylist():
        if isinstance(row, list):
            found.update(m.get("content", "") for m in row if isinstance(m, dict) and m.get("role") == "user")
    if len(found) > 1:
        raise NLAError(f"{where}: the prompt column holds {len(found)} different instructions; nla trains one")
    return next(iter(found), None)


def av_contract(table: pa.Table, sidecar: dict[str, Any], where: str = "") -> tuple[str | None, Marker | None]:
    """The AV instruction (with ``{injection_char}``) and marker an official AV dataset was built with.

    The instruction comes from ``prompt_templates.actor|av``, else from the chat ``prompt`` column
    (``<INJECT>`` turned back into ``{injection_char}``); the marker from ``tokens.injection_*``. Either
    is None when the data does not state it (nla's own teacher parquet).
    """
    tmpl = meta.template(sidecar, "av")
    from_prompt = _prompt_instruction(table, where)
    if from_prompt is not None:
        if INJECT_PLACEHOLDER not in from_prompt:
            raise NLAError(f"{where}: the prompt column's instruction has no {INJECT_PLACEHOLDER}")
        filled = from_prompt.replace(INJECT_PLACEHOLDER, INJECTION_PLACEHOLDER)
        if tmpl is not None and tmpl != filled:
            raise NLAError(f"{where}: the prompt column and the sidecar's actor template differ")
        tmpl = filled
    toks = sidecar.get("tokens") or {}
    marker = None
    if toks.get("injection_char") is not None:
        try:
            marker = Marker.from_tokens(toks)
        except (KeyError, TypeError, ValueError) as e:
            raise NLAError(f"{where}: the sidecar's tokens block is incomplete: {e}") from e
    return tmpl, marker


__all__ = ["EXPLANATION_COLUMNS", "INJECT_PLACEHOLDER", "TEXT_COLUMNS", "av_contract", "explanation_texts", "unwrap"]
