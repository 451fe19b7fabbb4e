"""The teacher registry: a provider by name (``anthropic``, ``openai``, ``hf``, ``offline``).

>>> teacher = make_teacher("offline", TeacherOptions(model="smollm2-135m"))   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

from nla.common.errors import NLAError
from nla.teach.api import AnthropicTeacher, OpenAITeacher
from nla.teach.base import Teacher, TeacherOptions
from nla.teach.local import HFTeacher
from nla.teach.offline import OfflineTeacher

TEACHERS: dict[str, Callable[[TeacherOptions], Teacher]] = {
    "anthropic": AnthropicTeacher,
    "openai": OpenAITeacher,
    "hf": HFTeacher,
    "offline": OfflineTeacher,
}


def register_teacher(name: str, factory: Callable[[TeacherOptions], Teacher]) -> None:
    """Add a teacher under ``name`` (a plug-in point; later registrations replace earlier ones)."""
    TEACHERS[name] = factory


def make_teacher(name: str, opts: TeacherOptions | None = None) -> Teacher:
    if name not in TEACHERS:
        raise NLAError(f"unknown teacher {name!r}; known teachers: {', '.join(sorted(TEACHERS))}")
    return TEACHERS[name](opts or TeacherOptions())
