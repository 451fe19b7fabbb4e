"""Warm-start explanations: the Teacher protocol and strict answer parsing (``base``), one module per
provider (``api``, ``local``, ``offline``), the registry by name (``registry``) and the resumable
``nla teach`` stage (``run``).
"""
