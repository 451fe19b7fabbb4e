"""How far to trust an NLA: the round trip with controls (``roundtrip``), best-of-K reranking
(``rerank``) and the evaluation card (``card``).
"""
