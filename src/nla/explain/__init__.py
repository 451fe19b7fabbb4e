"""Inference: the :class:`~nla.explain.api.NLA` API (``api``), what it reads (``inputs``: texts, chats,
vector files), position specs (``positions``) and the terminal/HTML/JSONL reports (``report``).
"""
