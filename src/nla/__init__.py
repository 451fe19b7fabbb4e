"""nla: Natural Language Autoencoders for LLM activations.

An NLA explains a residual-stream vector of a *target* model in plain English (the activation
verbalizer, AV) and scores the explanation by reconstructing the vector from it (the activation
reconstructor, AR). See the README for the pipeline and the CLI.

The folders follow the pipeline, and each layer imports only from the layers below it (and from its
own folder); ``tests/test_layers.py`` enforces this rule on every import, top-level or inside functions:

    common, resources      errors, paths, config dataclasses, the nla_meta.yaml contract; shipped files
    core                   pure math and hooks on stock modules (metrics, text rules, injection, GRPO)
    generation             decoding backends for the AV (a hand-rolled HF loop; vLLM with prompt_embeds)
    models                 the target LM, the AV, the AR, LoRA helpers
    data                   documents, corpora, extraction, the activation dataset (the one parquet reader)
    teach                  warm-start teachers and the ``nla teach`` stage
    evaluate               round trip with controls, best-of-K reranking, the evaluation card
    train                  the shared SFT loop, AR-SFT, AV-SFT, joint RL
    export, verbalize      stages after training: LoRA export, the AV as a teacher
    export_official        merged checkpoints in the official layout (built on export)
    explain                the NLA inference API, inputs, positions, reports
    faithfulness, audit    suites and jobs built on the API and the stages
    pipeline               the whole recipe as one command, its card and faithfulness report the last stages
    serve                  the web app over the API and the audit store
    cli                    thin commands

>>> from nla import NLA                                               # doctest: +SKIP
>>> nla = NLA.from_pretrained("runs/smol/av/final", "runs/smol/ar/final")  # doctest: +SKIP
>>> nla.explain("The Eiffel Tower is in Paris.", positions="last")   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from nla.common.errors import NLAError

__version__ = "0.1.0"

# imported on first use, so that `import nla` (and every `nla` command's start-up) does not load torch
_LAZY = {
    "DEFAULT_TARGET": "nla.models.target",
    "Target": "nla.models.target",
    "load_target": "nla.models.target",
    "NLA": "nla.explain.api",
    "ActivationVerbalizer": "nla.models.av",
    "ActivationReconstructor": "nla.models.ar",
    "load_corpus": "nla.data.corpus",
    "extract": "nla.data.extract",
    "ExtractConfig": "nla.data.extract",
}


def __getattr__(name: str) -> Any:
    """Import the heavier parts of the API on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nla' has no attribute {name!r}")


__all__ = ["NLAError", "__version__", *_LAZY]
