"""``nla serve-sglang``: an SGLang-compatible ``/generate`` endpoint (``input_embeds``) for an AV, on CPU.

    nla export --format official --out nla-official
    nla serve-sglang --av nla-official/av --port 30000
    # then the official client: NLAClient("nla-official/av", sglang_url="http://127.0.0.1:30000")

The official NLA inference client sends the AV prompt as embeddings to SGLang's ``/generate``; this speaks
that protocol with plain HF generation (:mod:`nla.serve.sglang`), so the client runs without a GPU engine.
Binds 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from nla.common.config import config_from_args, option

NAME = "serve-sglang"
HELP = "Serve an AV over SGLang's /generate protocol (input_embeds), for the official NLA client."
log = logging.getLogger(__name__)


@dataclass
class ServeSGLangConfig:
    """Options of ``nla serve-sglang``."""

    av: str | None = option(None, "AV checkpoint (ours or official); default: the NLA shipped with nla.")
    host: str = option("127.0.0.1", "Address to bind (127.0.0.1: this machine only).")
    port: int = option(30000, "Port to listen on (SGLang's default; 0: any free port).")
    device: str = option("cpu", "Torch device, e.g. cpu or cuda:0.")
    dtype: str = option("float32", "Model dtype.", choices=["float32", "bfloat16", "float16"])


CONFIG = ServeSGLangConfig


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from nla.explain.api import resolve_nla_paths
    from nla.models.av import ActivationVerbalizer
    from nla.serve.server import bind
    from nla.serve.sglang import create_app

    cfg = config_from_args(ServeSGLangConfig, args)
    sock = bind(cfg.host, cfg.port)  # one clear error for a taken port, before the model loads
    av_path, _ = resolve_nla_paths(cfg.av, None)
    av = ActivationVerbalizer.from_pretrained(av_path, device=cfg.device, dtype=cfg.dtype)
    app = create_app(av.model, av.tokenizer, name=str(av_path))
    host, port = sock.getsockname()[:2]
    log.info("nla serve-sglang: POST http://%s:%d/generate (Ctrl-C to stop)", host, port)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    return 0
