"""Deterministic text features of a context for the rich offline teacher: what the text is about (topic and
salient words), which language it is in (natural or programming), and in a chat who is speaking and what
the user wants. Pure functions of the text; no model.

>>> topic_of("Preheat the oven, then bake the bread for 20 minutes.").label
'food and cooking'
>>> natural_language("Le chat est sur la table et il dort dans le jardin.")
'French'
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import yaml

from nla.resources import resource

_WORD = re.compile(r"[^\W\d_][\w'-]*", re.UNICODE)
_SYSTEM = re.compile(r"<\|im_start\|>\s*system.*?(?:<\|im_end\|>|$)", re.DOTALL)
# a base model without a chat template reads chats as plain transcripts (nla.data.positions.plain_transcript):
# "User: ..." blocks apart by blank lines, the first after <bos>
PLAIN_ROLE = r"(?:\A(?:<[a-z_]+>)?|\n\n)(User|Assistant|System):"
_ROLE = re.compile(
    r"<\|im_start\|>\s*(\w+)\s*|<\|start_header_id\|>\s*(\w+)\s*<\|end_header_id\|>|<start_of_turn>(\w+)|" + PLAIN_ROLE
)
_SPECIAL = re.compile(r"<\|[^|>]{1,40}\|>|<(?:start|end)_of_turn>|\[/?INST\]")


@dataclass(frozen=True)
class Topic:
    label: str  # "" when no topic stands out
    score: float  # weighted cue count of the label


@functools.lru_cache(maxsize=1)
def _topic_patterns() -> dict[str, re.Pattern[str]]:
    spec = yaml.safe_load(resource("topics.yaml").read_text(encoding="utf-8"))
    out: dict[str, re.Pattern[str]] = {}
    for label, cues in spec["topics"].items():
        parts = [re.escape(c[:-1]) + r"[\w'-]*" if c.endswith("*") else re.escape(c) for c in map(str, cues)]
        parts = [p.replace(r"\ ", r"\s+") for p in parts]
        out[label] = re.compile(r"(?<![\w-])(?:" + "|".join(parts) + r")(?![\w-])", re.IGNORECASE)
    return out


def visible_text(context: str) -> str:
    """The context without a chat system turn and without special tokens (what the text is about)."""
    return _SPECIAL.sub(" ", _ROLE.sub(" ", _SYSTEM.sub(" ", context)))


def topic_of(text: str, *, window: int = 1500, min_score: float = 1.5) -> Topic:
    """The topic of ``text`` (already :func:`visible_text`): the taxonomy entry with the highest cue score
    over the last ``window`` characters, a cue counting 1 at the start of the window up to 2 at its end.
    No label below ``min_score`` (one cue at the very end scores 2)."""
    tail = text[-window:]
    n = max(1, len(tail))
    scores = {label: sum(1.0 + m.start() / n for m in pat.finditer(tail)) for label, pat in _topic_patterns().items()}
    ranked = sorted(scores, key=lambda k: (-scores[k], k))
    best = ranked[0]
    return Topic(best if scores[best] >= min_score else "", scores[best])


# Frequent short function words of each language (lower case). A text is in the language with the most hits;
# English needs no evidence (it is the default when nothing else stands out).
_STOPWORDS = {
    "English": "the and of to is in that it for with was on are as be this you not have but they",
    "French": "le la les de des est une un et en pour dans que qui pas sur au aux avec il elle ne à été ce cette",
    "German": "der die das und ist nicht mit ein eine den dem ich sie es auf zu von sich auch wir ihr sind",
    "Spanish": "el la los las es una un y que de en por para con no se su al del como pero muy",
    "Italian": "il lo la gli le di che non una un per con sono della nel questo anche come ma del",
    "Portuguese": "o os as de que não uma um para com em por se do da mais mas como dos das",
    "Dutch": "de het een en van is niet dat op te zijn met voor ik je we ook maar",
}
_STOPSETS = {lang: frozenset(words.split()) for lang, words in _STOPWORDS.items()}


def natural_language(text: str, *, window: int = 600) -> str:
    """The natural language of the last ``window`` characters of ``text`` by function-word counts."""
    words = [w.lower() for w in _WORD.findall(text[-window:])]
    if not words:
        return "English"
    hits = {lang: sum(w in stops for w in words) for lang, stops in _STOPSETS.items()}
    best = max(hits, key=lambda k: (hits[k], k == "English"))
    if best != "English" and hits[best] >= max(3, 1.3 * hits["English"]):
        return best
    return "English"


_FENCE = re.compile(r"```([A-Za-z+#]*)")
_CODE_LANGS: list[tuple[str, re.Pattern[str]]] = [
    ("Python", re.compile(r"^\s*(?:def |class \w+.*:|import \w|from \w[\w.]* import|print\(|elif |>>> )", re.M)),
    ("JavaScript", re.compile(r"\b(?:function\s*\w*\(|const |let |=>|console\.log|document\.)")),
    ("Java", re.compile(r"\bpublic (?:static |class )|System\.out\.println|\bprivate \w+ \w+;")),
    ("C or C++", re.compile(r"#include\s*<|\bstd::|\bint main\s*\(|printf\(")),
    ("Rust", re.compile(r"\bfn \w+\(|\blet mut\b|println!")),
    ("Go", re.compile(r"\bfunc \w+\(|\bpackage main\b|fmt\.Print")),
    ("SQL", re.compile(r"\b(?:SELECT .+ FROM|INSERT INTO|CREATE TABLE)\b")),
    ("HTML", re.compile(r"</?(?:div|span|html|body|p|a|ul|li)\b[^>]*>")),
    ("shell", re.compile(r"^\s*(?:\$ |pip install |sudo |cd \w|ls -)", re.M)),
]
_FENCE_NAMES = {"py": "Python", "python": "Python", "js": "JavaScript", "javascript": "JavaScript",
                "ts": "TypeScript", "typescript": "TypeScript", "java": "Java", "c": "C or C++", "cpp": "C or C++",
                "c++": "C or C++", "rust": "Rust", "go": "Go", "sql": "SQL", "html": "HTML", "bash": "shell",
                "sh": "shell", "shell": "shell", "ruby": "Ruby", "csharp": "C#", "cs": "C#", "c#": "C#"}  # fmt: skip


def code_language(text: str, *, window: int = 800) -> tuple[str, bool]:
    """``(language, inside_a_code_block)``: the programming language of the code the text ends in, or
    ``("", False)`` for text that is not code. An unclosed markdown fence decides; else code-like lines
    in the last ``window`` characters (at least two matches of one language)."""
    fences = list(_FENCE.finditer(text))
    if len(fences) % 2 == 1:  # inside an open ``` block
        name = fences[-1].group(1).lower()
        return _FENCE_NAMES.get(name, "code" if not name else name), True
    tail = text[-window:]
    counts = {lang: len(pat.findall(tail)) for lang, pat in _CODE_LANGS}
    lang = max(counts, key=lambda k: counts[k])
    return (lang, False) if counts[lang] >= 2 else ("", False)


# What a user asks for, by the first matching rule on the user's last message (lower case).
_INTENTS: list[tuple[str, re.Pattern[str]]] = [
    ("a translation", re.compile(r"\btranslat")),
    ("code", re.compile(r"\b(?:write|implement|create|fix|debug)\b.*\b(?:function|program|script|code|class)\b")),
    ("how-to instructions", re.compile(r"\brecipe|\bhow (?:do|can|should) i (?:cook|bake|boil|make)\b")),
    ("a story or a poem", re.compile(r"\b(?:story|poem|haiku|limerick|song lyrics|tale)\b")),
    ("an email or a letter", re.compile(r"\b(?:email|e-mail|letter|message to)\b")),
    ("a summary", re.compile(r"\b(?:summari[sz]e|summary|tl;dr)\b")),
    ("a calculation", re.compile(r"\b(?:how many|how much|calculate|compute|solve)\b|\d+\s*[-+*/x×]\s*\d+")),
    ("an explanation", re.compile(r"^(?:explain|what is|what are|what does|why|how does|how do|describe)\b|\bexplain")),
    ("advice", re.compile(r"\b(?:should i|how can i|how do i|tips|advice|help me)\b")),
    ("facts", re.compile(r"^(?:tell me|give me|list|name)\b|\bfacts?\b")),
]


_Q = "an answer to a question"


def chat_turns(context: str) -> list[tuple[str, str]]:
    """``(role, text)`` of each chat turn so far (the last one possibly unfinished); [] for plain text."""
    marks = list(_ROLE.finditer(context))
    out = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(context)
        role = next(g for g in m.groups() if g).lower()
        out.append((role, _SPECIAL.sub(" ", context[m.end() : end]).strip()))
    return out


def user_intent(message: str) -> str:
    """What a user's message asks for, e.g. "code" ("" when it fits no rule). The names say what kind of
    answer is wanted, never its topic (the topic line says that; a recipe is "how-to instructions")."""
    low = " ".join(message.lower().split())
    for name, pat in _INTENTS:
        if pat.search(low):
            return name
    return _Q if low.endswith("?") else ""


def chat_situation(context: str) -> str:
    """Who is writing and what the user wants, e.g. "the assistant answers a request for code"."""
    turns = [(r, t) for r, t in chat_turns(context) if r != "system"]
    if not turns:
        return ""
    user = next((t for r, t in reversed(turns) if r == "user"), "")
    speaker = turns[-1][0]
    intent = user_intent(user) if user else ""
    if speaker == "user":
        if not intent:
            return "the user is writing"
        return "the user asks " + ("a question" if intent == _Q else f"for {intent}")
    if speaker == "assistant":
        if not intent:
            return "the assistant is answering"
        return "the assistant answers " + ("a question" if intent == _Q else f"a request for {intent}")
    return f"the {speaker} is writing"
