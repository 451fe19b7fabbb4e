"""Faithfulness: how far can an NLA's explanations be trusted? Measured against ground truth.

- :mod:`~nla.faithfulness.concepts`: concept sets (prompts + keywords; the shipped one and users' YAML/JSONL)
  and the keyword rule that says an explanation names a concept;
- :mod:`~nla.faithfulness.directions`: difference-of-means concept directions and their held-out probe AUC;
- :mod:`~nla.faithfulness.planting`: planted directions (hit rate, false positives, cross-talk, the AR's
  view, a keyword-free score) and topic recall on held-out text;
- :mod:`~nla.faithfulness.heldout`: on real held-out rows, perturbations (what carries the score), the
  token-lookup control, next-token claims and quote grounding, split by setting and final-token type;
- :mod:`~nla.faithfulness.suite`: ``nla faithfulness`` (options, resume cache, progress) and
  :mod:`~nla.faithfulness.report` / :mod:`~nla.faithfulness.page`: the summary, JSON and HTML report.

    nla faithfulness --quick
    nla faithfulness --data runs/teach/eval.parquet --train-data runs/teach/ar_sft.parquet
"""
