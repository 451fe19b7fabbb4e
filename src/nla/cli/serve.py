"""``nla serve``: a local web viewer and JSON API over an audit database (FastAPI + uvicorn).

    nla serve --db audit.db --port 8765     # then open http://127.0.0.1:8765/
    nla serve                               # no DB: live explain / score / compare only

Transcripts are shaded by how much each token's explanation beats its empty-explanation control; click a
token for its explanation, scores and context; search; flags; live explain; compare; score your own
explanation. Binds 127.0.0.1 unless --host says otherwise. API: /api/explain, /api/score, /api/compare,
/api/search?q=..., /api/flags (docs/audit.md).
"""

from __future__ import annotations

import argparse

from nla.common.config import config_from_args
from nla.serve.server import ServeConfig

NAME, CONFIG = "serve", ServeConfig
HELP = "Browse an audit database in a local web viewer; explain, score and compare live."


def run(args: argparse.Namespace) -> int:
    from nla.serve.server import serve

    serve(config_from_args(ServeConfig, args))
    return 0
