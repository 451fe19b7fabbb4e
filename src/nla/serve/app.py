"""The web viewer and JSON API of ``nla serve`` (FastAPI): browse an audit DB, and explain live.

Pages: ``/`` (one static page: transcripts shaded by how much each token's explanation beats its
empty-explanation control, token details, search, flags, live explain, compare, score).

JSON API (every error is a JSON ``{"error": "..."}`` with a 4xx status, never a stack trace):

- ``GET /api/info``: the DB, its runs, whether an NLA is available for live calls;
- ``GET /api/documents?run=``: documents with explained counts, mean margin and flag counts;
- ``GET /api/document?doc=ID&run=``: every token of one document, with the scores of explained ones;
- ``GET /api/position/{pos_id}``: one explained position: explanation, all samples, scores, context, flags;
- ``GET /api/search?q=...&min_margin=&worth=&role=&doc=&run=&limit=``: FTS5 search of the explanations
  (``worth=true``: only those with the verdict 'worth reading');
- ``GET /api/flags?run=``: the stored flags (``nla audit flags --rules``), per detector and document;
- ``POST /api/explain`` ``{"text" | "messages", "positions": "last"}``: explain a new text live;
- ``POST /api/score`` ``{"explanation", "pos_id" | ("text", "position")}``: how well the AR rebuilds the
  activation from YOUR explanation, beside the empty-explanation control;
- ``POST /api/compare`` ``{"a", "b"}`` (position ids) or ``{"text_a", "text_b"}`` (mean activations):
  explain the difference ``a - b``.

Live calls need an NLA: given, or loaded on first use by ``nla_loader``. The DB is opened read-only per
request (SQLite WAL: a running audit may keep writing).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from nla.audit.flags import flag_summary
from nla.audit.search import document_view, documents, position, search_store
from nla.audit.store import Store
from nla.common.errors import NLAError
from nla.core.metrics import cosine, fve_nrm, mse_nrm

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_LIVE_POSITIONS = 64  # a live explain call decodes at most this many tokens


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ExplainRequest(BaseModel):
    text: str | None = None
    messages: list[Message] | None = None
    positions: str = "last"
    max_new_tokens: int = Field(150, ge=1, le=400)
    best_of: int = Field(1, ge=1, le=8)


class ScoreRequest(BaseModel):
    explanation: str
    pos_id: int | None = None
    text: str | None = None
    position: int = -1


class CompareRequest(BaseModel):
    a: int | None = None
    b: int | None = None
    text_a: str | None = None
    text_b: str | None = None
    max_new_tokens: int = Field(150, ge=1, le=400)


def _record(r: Any) -> dict[str, Any]:
    margin = None if r.cosine is None or r.control_cosine is None else r.cosine - r.control_cosine
    return {
        "explanation": r.explanation,
        "raw": r.raw,
        "cosine": r.cosine,
        "control_cosine": r.control_cosine,
        "margin": margin,
        "fve": r.fve,
        "control_fve": r.control_fve,
        "beats_control": r.beats_control,
        "lookup_fve": r.lookup_fve,
        "worth_reading": r.worth_reading,
    }


def create_app(
    db: str | Path | None = None, *, nla: Any = None, nla_loader: Callable[[], Any] | None = None
) -> FastAPI:
    """The app over the audit DB ``db`` (None: live explain only). ``nla``: an :class:`nla.explain.api.NLA`
    for live calls, or ``nla_loader()`` to load one on first use."""
    if db is not None:
        with Store(db):  # one clear error now if it is not an audit DB
            pass
    app = FastAPI(title="nla serve", docs_url=None, redoc_url=None)
    lock = threading.Lock()  # one live model call at a time (the model is not thread-safe)
    live: dict[str, Any] = {"nla": nla}

    def model() -> Any:
        with lock:
            if live["nla"] is None:
                if nla_loader is None:
                    raise HTTPException(503, "no NLA is loaded: start `nla serve` with one to use live calls")
                live["nla"] = nla_loader()
        return live["nla"]

    def store() -> Store:
        if db is None:
            raise HTTPException(404, "no audit database: start `nla serve --db audit.db` to browse one")
        return Store(db)

    @app.exception_handler(NLAError)
    async def _nla_error(_req: Request, e: NLAError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)  # also FastAPI's, and the router's own 404 / 405
    async def _http_error(_req: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_req: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return JSONResponse({"error": f"bad request: {where} {first.get('msg', 'invalid')}".strip()}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal(_req: Request, e: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse({"error": f"internal error ({type(e).__name__}); see the server log"}, status_code=500)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        runs = []
        if db is not None:
            with store() as s:
                runs = [{"run_id": r["run_id"], "created": r["created"], "nla": r["nla"]} for r in s.runs()]
        return {
            "db": None if db is None else str(db),
            "runs": runs,
            "live": live["nla"] is not None or bool(nla_loader),
        }

    @app.get("/api/documents")
    def api_documents(run: int | None = None, limit: int = 1000, offset: int = 0) -> list[dict[str, Any]]:
        with store() as s:
            return documents(s, run, limit=limit, offset=offset)

    @app.get("/api/document")
    def api_document(doc: str, run: int | None = None) -> dict[str, Any]:
        with store() as s:
            return document_view(s, doc, run)

    @app.get("/api/position/{pos_id}")
    def api_position(pos_id: int) -> dict[str, Any]:
        with store() as s:
            out = position(s, pos_id)
            rows = s.query("SELECT detector, score, agreement FROM flags WHERE pos_id = ?", (pos_id,))
            out["flags"] = [dict(r) for r in rows]
            return out

    @app.get("/api/search")
    def api_search(
        q: str,
        run: int | None = None,
        min_margin: float | None = None,
        worth: bool = False,
        role: str | None = None,
        doc: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        with store() as s:
            return search_store(
                s, q, run=run, min_margin=min_margin, role=role or None, doc=doc or None, limit=limit, worth=worth
            )

    @app.get("/api/flags")
    def api_flags(run: int | None = None) -> dict[str, Any]:
        with store() as s:
            return flag_summary(s, run)

    @app.post("/api/explain")
    def api_explain(req: ExplainRequest) -> dict[str, Any]:
        if (req.text is None) == (req.messages is None):
            raise HTTPException(400, "give exactly one of text or messages")
        source: Any = req.text if req.text is not None else [m.model_dump() for m in req.messages or []]
        m = model()
        from nla.explain.positions import parse_positions

        enc = m.encode(source)
        picked = parse_positions(req.positions, len(enc.input_ids), assistant_mask=enc.assistant_mask)
        if len(picked) > MAX_LIVE_POSITIONS:
            raise HTTPException(400, f"{len(picked)} positions: a live call explains at most {MAX_LIVE_POSITIONS}")
        with lock:
            recs = m.explain(source, picked, max_new_tokens=req.max_new_tokens, best_of=req.best_of)
        return {
            "tokens": enc.tokens,
            "records": [{"position": r.position, "token": r.token, **_record(r)} for r in recs],
        }

    def _vector(pos_id: int | None, text: str | None, where: int | str) -> np.ndarray:  # -> (d,)
        if pos_id is not None:
            with store() as s:
                return s.activations([pos_id])[0]
        if not text:
            raise HTTPException(400, "give a position id or a text")
        m = model()
        enc = m.encode(text)
        with lock:
            acts = m.activations(enc.input_ids).numpy()  # (T, d)
        if where == "mean":
            return acts[1:].mean(0) if acts.shape[0] > 1 else acts[0]
        if not -len(acts) <= int(where) < len(acts):
            raise HTTPException(400, f"position {where} is out of range: the text has {len(acts)} tokens")
        return acts[int(where)]

    @app.post("/api/score")
    def api_score(req: ScoreRequest) -> dict[str, Any]:
        import torch

        from nla.core.text import text_for_ar

        gold = torch.from_numpy(np.array(_vector(req.pos_id, req.text, req.position), dtype=np.float32))[None]
        m = model()
        if m.ar is None:
            raise HTTPException(503, "the loaded NLA has no AR to score with")
        with lock:
            pred = m.ar.predict([text_for_ar(req.explanation), ""]).float()  # (2, d)
        cos, ctrl = float(cosine(pred[:1], gold)[0]), float(cosine(pred[1:], gold)[0])
        mse = float(mse_nrm(pred[:1], gold)[0])
        fve = fve_nrm(mse, m.baseline) if m.baseline is not None else None
        return {"cosine": cos, "mse_nrm": mse, "fve": fve, "control_cosine": ctrl, "margin": cos - ctrl}

    @app.post("/api/compare")
    def api_compare(req: CompareRequest) -> dict[str, Any]:
        if req.a is not None and req.b is not None:
            va, vb = _vector(req.a, None, 0), _vector(req.b, None, 0)
        elif req.text_a and req.text_b:
            va, vb = _vector(None, req.text_a, "mean"), _vector(None, req.text_b, "mean")
        else:
            raise HTTPException(400, "give two position ids (a, b) or two texts (text_a, text_b)")
        diff = va - vb
        if not np.any(diff):
            raise HTTPException(400, "the two activations are identical: their difference has no direction")
        m = model()
        with lock:
            rec = m.explain_vectors(diff, max_new_tokens=req.max_new_tokens, best_of=1)[0]
        return {"norm": float(np.linalg.norm(diff)), **_record(rec)}

    return app


__all__ = ["create_app"]
