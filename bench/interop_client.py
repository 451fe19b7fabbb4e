"""The official NLA client code, run as it is, against an ``nla export --format official`` pair.

Run by ``bench/interop_official.py`` once per transformers version (a separate venv for 4.57); it imports
``nla_inference.py`` from the official repository (a path given on the command line, unmodified) and
imports nothing from nla, so it runs under whatever transformers the interpreter has.

    python bench/interop_client.py --official DIR --export OUT --work WORK --url http://127.0.0.1:30000

Reads ``WORK/vectors.npy`` and ``WORK/nla.json`` (nla's explanations and AR predictions) and writes
``WORK/official-<transformers version>.json``:

- ``client``: ``NLAClient(OUT/av).generate(v, temperature=0, extract_explanation=False)`` through the
  SGLang-protocol endpoint at ``--url`` (raw text), and the explanation the official ``EXPLANATION_RE``
  extracts from it (what ``generate`` returns by default);
- ``direct`` (``--direct``): the official client's own prompt and injection (``NLAClient._build_embeds``)
  followed by nla's greedy response, through ``AutoModelForCausalLM.from_pretrained(OUT/av)`` under THIS
  transformers, one forward: does every response token (and the end-of-turn) equal the argmax? (checks
  that this version reads the exported config and weights as nla does, e.g. the rope theta);
- ``critic``: ``NLACritic(OUT/ar, dtype=float32).reconstruct(e)`` for nla's explanations, and its
  ``score(e, v)``.

``--shim-chat-template``: transformers 5 made ``apply_chat_template(tokenize=True)`` return a dict, which
breaks the official ``load_nla_config`` / ``NLAClient`` for ANY checkpoint; this flag makes the default
``return_dict=False`` again at runtime (the official file stays unmodified) and is recorded in the output.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
from pathlib import Path

import httpx
import numpy as np
import torch
import transformers


def shim_chat_template() -> None:
    """Restore transformers 4.x's list return of ``apply_chat_template(tokenize=True)``."""
    base = transformers.PreTrainedTokenizerBase
    original = base.apply_chat_template

    @functools.wraps(original)
    def patched(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        kwargs.setdefault("return_dict", False)
        return original(self, *args, **kwargs)

    base.apply_chat_template = patched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", required=True, help="folder holding the official nla_inference.py")
    ap.add_argument("--export", required=True, help="output of nla export --format official (av/, ar/)")
    ap.add_argument("--work", required=True, help="folder with vectors.npy and nla.json; receives the result")
    ap.add_argument("--url", default="", help="SGLang-protocol endpoint serving the AV (empty: skip the client)")
    ap.add_argument("--max-new-tokens", type=int, default=150)
    ap.add_argument("--shim-chat-template", action="store_true")
    ap.add_argument("--timeout", type=float, default=1800.0, help="HTTP timeout per request (the file says 120 s)")
    ap.add_argument("--direct", action="store_true", help="also the teacher-forced greedy check under this version")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.shim_chat_template:
        shim_chat_template()
    source = Path(args.official) / "nla_inference.py"
    sys.path.insert(0, args.official)
    import nla_inference as official  # the official file, unmodified

    work, out = Path(args.work), Path(args.export)
    vectors = np.load(work / "vectors.npy", allow_pickle=False)
    ours = json.loads((work / "nla.json").read_text())
    result: dict = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "nla_inference_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "shim_chat_template": args.shim_chat_template,
    }
    if args.url:
        client = official.NLAClient(out / "av", sglang_url=args.url)
        # the file's 120 s per-request timeout is too short for a shared 2-core CPU: a longer one, at runtime
        client._http = httpx.Client(timeout=httpx.Timeout(args.timeout))
        raw = [client.generate(v, temperature=0, max_new_tokens=args.max_new_tokens, extract_explanation=False)
               for v in vectors]  # fmt: skip
        # what generate() returns by default, from the same text: the official regex, stripped
        expl = [m.group(1).strip() if (m := official.EXPLANATION_RE.search(t)) else t for t in raw]
        result["client"] = {"raw": raw, "explanation": expl}
    if args.direct:  # teacher-forced greedy check under THIS transformers: one forward per vector
        client = client if args.url else official.NLAClient(out / "av", sglang_url="http://unused")
        model = transformers.AutoModelForCausalLM.from_pretrained(str(out / "av"), dtype=torch.float32).eval()
        table = model.get_input_embeddings()
        eos = client.tokenizer.eos_token_id
        agree = []
        for v, raw in zip(vectors, ours["raw"], strict=True):
            embeds, _ = client._build_embeds(torch.as_tensor(v), None)  # the official prompt + injection
            resp = client.tokenizer.encode(raw, add_special_tokens=False) + [eos]
            with torch.no_grad():
                x = torch.cat([torch.as_tensor(embeds), table(torch.tensor(resp)).float()])[None]
                logits = model(inputs_embeds=x).logits[0]
            pred = logits[len(embeds) - 1 : len(embeds) - 1 + len(resp)].argmax(-1).tolist()
            agree.append(pred == resp)
        result["direct"] = {"greedy_agrees": agree}
    critic = official.NLACritic(out / "ar", dtype=torch.float32)
    recon = [critic.reconstruct(e).tolist() for e in ours["explanations"]]
    scores = [critic.score(e, v) for e, v in zip(ours["explanations"], vectors, strict=True)]
    result["critic"] = {"reconstruction": recon, "score": scores}
    path = work / f"official-{transformers.__version__}.json"
    path.write_text(json.dumps(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
