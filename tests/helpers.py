"""Builders for tests: a tiny byte-level BPE tokenizer and tiny random models, no downloads."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from nla.models.av import ActivationVerbalizer

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Natural language autoencoders explain activations of language models.",
    "def add(a, b):\n    return a + b\n",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "User: what is two plus two? Assistant: four.",
    "<explanation>The text is about cooking pasta.</explanation>",
    "Summary of the following text: <text>hello</text> <summary>",
    "1234567890 !?.,;:'\"()[]{}<>/\\|-_=+*&^%$#@~` concept",
] * 4


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAIN_TEXT, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer():
    """A ~400-token byte-level BPE tokenizer with a ChatML template (built in memory, deterministic)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_config(arch: str = "llama", *, vocab_size: int = 400, d: int = 64, n_layers: int = 3):
    """A tiny config of a real architecture: llama, qwen2 or gemma3 (text)."""
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=d,
        intermediate_size=2 * d,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "gemma3":
        return Gemma3TextConfig(**common, head_dim=16, sliding_window=64)
    raise ValueError(arch)


def tiny_model(arch: str = "llama", *, seed: int = 0, **kw):
    """A tiny random causal LM in eval mode (fp32)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **kw), dtype=torch.float32)
    return model.eval()


def tiny_target(arch: str = "llama", *, seed: int = 0, **kw):
    """A :class:`nla.models.target.Target` around a tiny random model and the tiny tokenizer."""
    from nla.models.target import target_from_model

    tok = tiny_tokenizer()
    return target_from_model(tiny_model(arch, seed=seed, vocab_size=len(tok), **kw), tok, name=f"tiny-{arch}")


def save_tiny_target(path, arch: str = "llama", *, seed: int = 0, **kw):
    """Write a tiny model + tokenizer as a local HF directory (loadable by ``load_target(path)``)."""
    t = tiny_target(arch, seed=seed, **kw)
    t.model.save_pretrained(path)
    t.tokenizer.save_pretrained(path)
    return path


class FakeJsonServer:
    """A local HTTP server on 127.0.0.1 (a thread) for API-client tests: no network needed.

    ``respond(request) -> (status, json_body)`` decides each answer; ``request`` is a dict with ``path``,
    ``headers`` (lower-cased names) and ``json``. Every request is recorded in ``self.requests``.
    Use as a context manager; ``url`` is ``http://127.0.0.1:<port>``.
    """

    def __init__(self, respond) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.respond, self.requests, self._lock = respond, [], threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                import json

                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                req = {
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "json": json.loads(body or b"{}"),
                }
                with outer._lock:
                    outer.requests.append(req)
                status, payload = outer.respond(req)
                data = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def accelerate_cpu_command(script: str, *args: str) -> list[str]:
    """``accelerate launch`` of ``script`` as 2 CPU processes on a free local port (gloo); ``--multi_gpu``
    because ``--cpu`` starts ONE process unless an mpirun hostfile is given."""
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    options = ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]
    return [sys.executable, *launch, *options, script, *args]


def random_av(arch: str = "llama", seed: int = 0) -> ActivationVerbalizer:
    """A tiny AV (:class:`nla.models.av.ActivationVerbalizer`) with large random weights: unlike the default
    init (which repeats one token), its answers differ between vectors and end at different steps."""
    from nla.models.av import ActivationVerbalizer

    av = ActivationVerbalizer.from_target(tiny_target(arch, seed=seed), injection_scale=4.0, layer=1)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in av.model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return av
