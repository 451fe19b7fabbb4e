"""Run the viewer: bind the socket ourselves (one clear error if the port is taken), then uvicorn.

>>> serve(ServeConfig(db="audit.db", port=8765))   # doctest: +SKIP
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass
from typing import Any

from nla.common.config import option
from nla.common.errors import NLAError

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """Options of ``nla serve``."""

    db: str | None = option(None, "Audit database to browse (without it: live explain only).")
    host: str = option("127.0.0.1", "Address to bind (127.0.0.1: this machine only).")
    port: int = option(8765, "Port to listen on (0: any free port).")
    av: str | None = option(None, "AV for live calls; default: the DB's latest run's NLA, else the shipped one.")
    ar: str | None = option(None, "AR for live calls (scores, the score box); default as for --av.")
    target: str | None = option(None, "Target model; default: the AV sidecar's extraction.base_model.")
    live: bool = option(True, "Offer live explain/score/compare (loads the NLA on first use).")
    device: str = option("cpu", "Torch device for live calls.")
    dtype: str = option("float32", "Model dtype.", choices=["float32", "bfloat16", "float16"])


def check_port(port: int) -> int:
    """A TCP port number 0..65535 (0: any free port); anything else is one clear error, not a wrapped port."""
    if not 0 <= int(port) <= 65535:
        raise NLAError(f"--port {port} is not a TCP port: use 1..65535 (or 0 for any free port)")
    return int(port)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; a bad or taken port or an unknown host is one clear error."""
    check_port(port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise NLAError(f"cannot resolve host {host!r}: {e.strerror}") from e
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise NLAError(f"port {port} on {host} is already in use: choose another with --port") from e
        raise NLAError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    sock.listen(128)
    return sock


def nla_loader(cfg: ServeConfig) -> Any:
    """A function that loads the NLA for live calls: --av/--ar, else the DB's latest run's, else shipped."""
    from nla.explain.api import NLA, resolve_nla_paths

    def load() -> Any:
        av, ar, target = cfg.av, cfg.ar, cfg.target
        if av is None and cfg.db is not None:
            from nla.audit.store import Store

            with Store(cfg.db) as s:
                runs = s.runs()
            if runs:
                desc = runs[-1]["nla"]
                av, ar, target = desc["av"], desc["ar"], target or desc["target"]
        av, ar = resolve_nla_paths(av, ar, target)
        log.info("loading the NLA for live calls: %s", av)
        return NLA.from_pretrained(av, ar, target=target, device=cfg.device, dtype=cfg.dtype)

    return load


def serve(cfg: ServeConfig) -> None:
    """Serve until interrupted."""
    check_port(cfg.port)  # before importing the web stack
    import uvicorn

    from nla.serve.app import create_app

    app = create_app(cfg.db, nla_loader=nla_loader(cfg) if cfg.live else None)
    sock = bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    log.info("nla serve: http://%s:%d/ (Ctrl-C to stop)", host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])


__all__ = ["ServeConfig", "bind", "check_port", "nla_loader", "serve"]
