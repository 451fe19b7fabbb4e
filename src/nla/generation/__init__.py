"""Generation backends for the AV (see :mod:`nla.generation.base`): ``hf`` (plain torch, the default) and
``vllm`` (``prompt_embeds`` on a vLLM engine)."""

from nla.generation import hf as _hf  # noqa: F401  (registers "hf")
from nla.generation import vllm as _vllm  # noqa: F401  (registers "vllm"; imports vllm only when used)
from nla.generation.base import GREEDY, Backend, Request, Slot, backend_names, get_backend

__all__ = ["GREEDY", "Backend", "Request", "Slot", "backend_names", "get_backend"]
