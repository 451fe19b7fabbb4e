"""Training: the shared SFT loop with checkpoints and exact resume (``loop``), AR-SFT (``ar``), AV-SFT
(``av``) and joint RL (``rl/``).
"""
