from __future__ import annotations

import socket

import pytest

from nla.common.errors import NLAError
from nla.core.metrics import cosine

pytest.importorskip("fastapi", reason="nla serve is an optional extra: pip install 'nla[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

from nla.audit.store import Store  # noqa: E402
from nla.serve.app import create_app  # noqa: E402
from nla.serve.server import bind  # noqa: E402


@pytest.fixture(scope="module")
def client(served: dict) -> TestClient:
    return TestClient(create_app(served["db"], nla=served["nla"]))


def test_page_and_info(client: TestClient, served: dict) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "nla serve" in page.text and 'id="q"' in page.text
    info = client.get("/api/info").json()
    assert info["db"] == str(served["db"]) and info["live"] and info["runs"][0]["run_id"] == 1


def test_documents_document_position(client: TestClient) -> None:
    docs = client.get("/api/documents").json()
    assert [d["doc_id"] for d in docs] == ["c0", "c1", "c2", "c3"]
    doc = client.get("/api/document", params={"doc": "c1"}).json()
    tok = doc["tokens"][5]
    assert tok["pos_id"] and tok["margin"] == pytest.approx(tok["cosine"] - tok["control_cosine"])
    pos = client.get(f"/api/position/{tok['pos_id']}").json()
    assert pos["token"] == tok["text"] and pos["explanation"].startswith("The text is about") and pos["flags"] == []
    assert client.get("/api/document", params={"doc": "nope"}).status_code == 400
    missing = client.get("/api/position/999999")
    assert missing.status_code == 400 and "no explained position" in missing.json()["error"]


def test_search_and_bad_queries(client: TestClient) -> None:
    hits = client.get("/api/search", params={"q": "secret OR paris OR code OR cooking"}).json()
    assert hits and all("explanation" in h and "before" in h for h in hits)
    bad = client.get("/api/search", params={"q": '"unterminated'})
    assert bad.status_code == 400 and bad.json()["error"].startswith("bad search query")
    assert "Traceback" not in bad.text
    missing = client.get("/api/search")
    assert missing.status_code == 422 and "q" in missing.json()["error"]
    wrong_type = client.get("/api/search", params={"q": "x", "min_margin": "lots"})
    assert wrong_type.status_code == 422 and "error" in wrong_type.json()


def test_flags_endpoint(client: TestClient, served: dict, tmp_path) -> None:
    from nla.audit.flags import Detector, run_flags

    with Store(served["db"]) as s:
        run_flags(s, [Detector(name="code", kind="text", keywords=["code"])])
    f = client.get("/api/flags").json()
    assert f["detectors"][0]["name"] == "code"
    flagged = f["detectors"][0]["flagged"]
    assert sum(d["flags"].get("code", 0) for d in f["documents"]) == flagged
    if flagged:
        hit = client.get("/api/search", params={"q": "code"}).json()[0]
        assert client.get(f"/api/position/{hit['pos_id']}").json()["flags"][0]["detector"] == "code"


def test_live_explain(client: TestClient, served: dict) -> None:
    r = client.post("/api/explain", json={"text": "The quick brown fox.", "positions": "0,last"})
    assert r.status_code == 200
    recs = r.json()["records"]
    assert [x["position"] for x in recs] == [0, len(r.json()["tokens"]) - 1]
    assert recs[0]["explanation"].startswith("The text is about") and recs[0]["cosine"] is not None
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "four."}]
    assert client.post("/api/explain", json={"messages": chat, "positions": "assistant"}).status_code == 200
    for body, status in [
        ({"positions": "last"}, 400),  # no text
        ({"text": "x", "messages": chat}, 400),
        ({"text": "The fox.", "positions": "99"}, 400),
        ({"text": "The fox.", "max_new_tokens": 0}, 422),
        ({"text": "The fox " * 40, "positions": "all"}, 400),  # more than a live call explains
    ]:
        r = client.post("/api/explain", json=body)
        assert r.status_code == status and "error" in r.json(), body


def test_score_your_own_explanation(client: TestClient, served: dict) -> None:
    nla = served["nla"]
    hit = client.get("/api/document", params={"doc": "c0"}).json()["tokens"][4]
    stored = client.get(f"/api/position/{hit['pos_id']}").json()
    same = client.post("/api/score", json={"pos_id": hit["pos_id"], "explanation": stored["explanation"]}).json()
    assert same["cosine"] == pytest.approx(stored["cosine"], abs=1e-5)  # the stored score, recomputed
    assert same["control_cosine"] == pytest.approx(stored["control_cosine"], abs=1e-5)
    other = client.post("/api/score", json={"pos_id": hit["pos_id"], "explanation": "a cat on a mat"}).json()
    gold = nla.activations(nla.encode("The quick brown fox.").input_ids)[-1]
    pred = nla.ar.predict(["a cat on a mat"])[0]
    live = client.post("/api/score", json={"text": "The quick brown fox.", "explanation": "a cat on a mat"}).json()
    assert live["cosine"] == pytest.approx(float(cosine(pred, gold)), abs=1e-5)
    assert other["cosine"] != pytest.approx(same["cosine"])
    assert client.post("/api/score", json={"explanation": "x"}).status_code == 400
    assert client.post("/api/score", json={"text": "fox", "position": 50, "explanation": "x"}).status_code == 400


def test_compare(client: TestClient) -> None:
    toks = client.get("/api/document", params={"doc": "c1"}).json()["tokens"]
    r = client.post("/api/compare", json={"a": toks[3]["pos_id"], "b": toks[6]["pos_id"]})
    assert r.status_code == 200 and r.json()["norm"] > 0 and r.json()["explanation"]
    r = client.post("/api/compare", json={"text_a": "Paris is in France.", "text_b": "def add(a, b):"})
    assert r.status_code == 200
    same = client.post("/api/compare", json={"a": toks[3]["pos_id"], "b": toks[3]["pos_id"]})
    assert same.status_code == 400 and "identical" in same.json()["error"]
    assert client.post("/api/compare", json={"a": 1}).status_code == 400


def test_without_db_and_without_nla(served: dict) -> None:
    live_only = TestClient(create_app(None, nla=served["nla"]))
    assert live_only.get("/api/info").json()["db"] is None
    r = live_only.get("/api/search", params={"q": "x"})
    assert r.status_code == 404 and "no audit database" in r.json()["error"]
    assert live_only.post("/api/explain", json={"text": "The fox."}).status_code == 200
    browse_only = TestClient(create_app(served["db"]))
    r = browse_only.post("/api/explain", json={"text": "The fox."})
    assert r.status_code == 503 and "no NLA" in r.json()["error"]


def test_bad_db_and_port_in_use(tmp_path) -> None:
    (tmp_path / "x.db").write_text("not sqlite at all, just text " * 100)
    with pytest.raises(NLAError, match="not an nla audit database"):
        create_app(tmp_path / "x.db")
    with pytest.raises(NLAError, match="no audit database"):
        create_app(tmp_path / "missing.db")
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    try:
        with pytest.raises(NLAError, match=f"port {held.getsockname()[1]} on 127.0.0.1 is already in use"):
            bind("127.0.0.1", held.getsockname()[1])
    finally:
        held.close()
    sock = bind("127.0.0.1", 0)
    assert sock.getsockname()[0] == "127.0.0.1"
    sock.close()


def test_bad_port_unknown_route_and_role(client: TestClient, served: dict) -> None:
    for port in (99999, -1, 65536):
        with pytest.raises(NLAError, match=f"--port {port} is not a TCP port"):
            bind("127.0.0.1", port)
    for method, path in [("get", "/no/such/page"), ("get", "/api/nothing"), ("delete", "/api/explain")]:
        r = getattr(client, method)(path)
        assert r.status_code in (404, 405) and set(r.json()) == {"error"}, (path, r.json())
    robot = [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "boop"}]
    r = client.post("/api/explain", json={"messages": robot})
    assert r.status_code == 422 and "role" in r.json()["error"]
    rec = client.post("/api/explain", json={"text": "The fox.", "positions": "last"}).json()["records"][0]
    assert {"lookup_fve", "worth_reading", "beats_control", "control_fve"} <= set(rec)
    assert rec["worth_reading"] is not True or rec["fve"] is None or rec["fve"] > 0
