"""The explanation tag format shared by teachers, the AV, and the RL reward.

The AV answers ``<explanation>...</explanation>``. :func:`extract_explanation` is strict: no closing
tag means no explanation (``None``), which the RL reward scores as a failure.
"""

from __future__ import annotations

import re

OPEN, CLOSE = "<explanation>", "</explanation>"
_TAGGED = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)
_CJK = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def wrap_explanation(text: str) -> str:
    return f"{OPEN}{text.strip()}{CLOSE}"


def extract_explanation(answer: str) -> str | None:
    """The stripped text inside the first complete ``<explanation>`` pair, or None if there is none."""
    m = _TAGGED.search(answer)
    if m is None:
        return None
    inner = m.group(1).strip()
    return inner or None


def text_for_ar(answer: str) -> str:
    """What the AR reads from an AV answer: the explanation inside the tags, or, when the tags fail, the
    answer with any tags removed (so a format failure is still scored, and counted separately)."""
    inner = extract_explanation(answer)
    return inner if inner is not None else answer.replace(OPEN, " ").replace(CLOSE, " ").strip()


def cjk_fraction(text: str) -> float:
    """Share of non-space characters that are CJK: high values mean the injection silently failed
    (the AV saw the raw marker character)."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    return sum(1 for c in chars if _CJK.match(c)) / len(chars)


_QUOTED = re.compile(r'"([^"\n]*)"')
_PERCENT = re.compile(r"\s*(?:<\s*1|\d{1,3}(?:\.\d+)?)\s*%")
_SPECIAL = re.compile(r"<\|[^|<>]+\|>")


def readable(text: str, specials: list[str] | None = None, *, escape_newlines: bool = True) -> str:
    """Special tokens as ``[name]`` (``<|im_end|>`` -> ``[im_end]``), newlines/tabs as ``\\n``/``\\t``.

    ``specials``: the tokenizer's special-token strings; ``None`` = every ``<|name|>`` in ``text``.
    """
    if specials is None:
        specials = sorted(set(_SPECIAL.findall(text)))
    if specials:
        pattern = "|".join(re.escape(s) for s in specials)
        text = re.sub(pattern, lambda m: "[" + m.group(0).strip("<|>") + "]", text)
    if escape_newlines:
        text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return text


def quote_grounding(
    explanation: str, context: str, *, min_chars: int = 3, predictions: bool = False
) -> tuple[int, int]:
    """How many double-quoted spans of ``explanation`` occur verbatim in ``context``: ``(found, quoted)``.

    Spans are compared in the teachers' :func:`readable` form (``<|im_end|>`` -> ``[im_end]``, newlines as
    ``\\n``, ``"`` as ``'``) after dropping a leading ellipsis; spans shorter than ``min_chars`` are
    ignored, and so are quoted next-token predictions (a span followed by a percentage, ``" of" 94%``):
    they claim what comes next, not what the context holds (the faithfulness suite checks them against the
    model's real distribution). Until round 4 they were counted (``predictions=True`` still does), which held
    even a faithful teacher well below 1 (compact teacher 0.63; 0.99 without them). Confabulated quotes
    (NLA.md §5.6) show up as a low share.
    """
    plain = readable(context).replace('"', "'")
    found = quoted = 0
    for m in _QUOTED.finditer(explanation):
        span = m.group(1).removeprefix("...").removeprefix("\u2026")
        if len(span.strip()) < min_chars or (not predictions and _PERCENT.match(explanation, m.end())):
            continue
        quoted += 1
        found += span in plain
    return found, quoted


# The rich style's content line: "Topic: <label>[; words: a, b, c]. Language: <language>."
_TOPIC_LINE = re.compile(r"Topic: (?P<topic>[^;.\n]+)(?:; words: (?P<words>[^\n]*?))?(?P<tail>\. Language: )")
UNCLEAR = "unclear"
DEFAULT_MIN_SUPPORT = 2  # best-of-K keeps a topic or salient word that 2 of the K answers make; 1 keeps all
MIN_SUPPORT_HELP = "With --best-of: keep a topic or salient word only when this many of the K answers name it (1: all)."


def filtering_support(best_of: int, min_support: int) -> int:
    """The support a decoding really filters with: ``min_support`` under best-of-K (K > 1), else 1 (all kept)."""
    return min_support if best_of > 1 and min_support > 1 else 1


def topic_claims(text: str) -> tuple[str, list[str]] | None:
    """The topic label and the distinct salient words (lower case, in order) of a rich-style explanation,
    or None when it has no topic line."""
    m = _TOPIC_LINE.search(text)
    if m is None:
        return None
    words = [w.strip().lower() for w in (m.group("words") or "").split(",")]
    return m.group("topic").strip(), list(dict.fromkeys(w for w in words if w))


def keep_supported(texts: list[str], min_support: int = DEFAULT_MIN_SUPPORT) -> list[str]:
    """Each answer of one vector's group with only the content claims that ``min_support`` answers of the
    group make (its own included): a topic fewer answers name becomes "unclear", a salient word fewer
    answers list is dropped, and a repeated word is said once. Everything else is left as written.

    Several answers for one vector (best-of-K decoding) agree on what the vector carries and disagree on
    what sampling invents; a claim made once in K answers is the second kind (docs/faithfulness.md).
    Answers without a topic line are returned unchanged and support nothing.
    """
    claims = [topic_claims(t) for t in texts]
    topics = [c[0] for c in claims if c is not None]
    word_sets = [set(c[1]) for c in claims if c is not None]
    out = []
    for text, claim in zip(texts, claims, strict=True):
        if claim is None:
            out.append(text)
            continue
        topic, words = claim
        if topic != UNCLEAR and topics.count(topic) < min_support:
            topic = UNCLEAR
        kept = [w for w in words if sum(w in s for s in word_sets) >= min_support]
        line = f"Topic: {topic}" + (f"; words: {', '.join(kept)}" if kept else "")
        m = _TOPIC_LINE.search(text)
        assert m is not None  # claim was parsed from it
        out.append(text[: m.start()] + line + text[m.start("tail") :])
    return out
