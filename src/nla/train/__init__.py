"""Training: the shared SFT loop (``loop``) with its resume machinery (``checkpoint``: seeding, RNG streams,
atomic checkpoints; ``tracking``: metrics.jsonl + TensorBoard/W&B), AR-SFT (``ar``), AV-SFT (``av``) and joint
RL by phase (``rl/``), which reuses the same machinery.
"""
