"""``nla serve``: a local web viewer and JSON API over an audit DB, with live explain, score and compare.

- :mod:`nla.serve.app`: the FastAPI app (``create_app``) and its endpoints;
- :mod:`nla.serve.server`: options, the socket (127.0.0.1 by default) and uvicorn;
- ``static/index.html``: the page.
"""
