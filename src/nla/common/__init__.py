"""Foundations every layer may use: the one user-facing error (``errors``), atomic writes and the cache
(``paths``), documented config dataclasses (``config``) and the ``nla_meta.yaml`` contract (``meta``).
"""
