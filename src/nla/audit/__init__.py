"""Audit many transcripts with an NLA: a searchable SQLite store of per-token explanations, and flags.

- :mod:`nla.audit.job`: ``nla audit DATA --out audit.db`` (plan, batched explain, resume, growing logs);
- :mod:`nla.audit.ray_engine`: the same job on Ray Data (``--engine ray``);
- :mod:`nla.audit.store`: the SQLite schema (WAL, FTS5) and its connection;
- :mod:`nla.audit.search`: ranked full-text search with filters, document and position views;
- :mod:`nla.audit.flags`: text and direction detectors from a rules file, and their disagreements.

See ``docs/audit.md``.
"""
