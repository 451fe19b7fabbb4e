"""The three networks of an NLA: the target LM (``target``), the activation verbalizer (``av``), the
activation reconstructor (``ar``), and LoRA helpers (``lora``).
"""
