"""Joint RL: GRPO on the AV with rewards from the current AR, which keeps training on the rollouts.

By phase: ``config`` (RLConfig), ``rollout`` (which activations, sampling G explanations each), ``rewards``
(named weighted terms), ``update`` (the AV's clipped-PG + KL steps, the AR's MSE step) and ``trainer`` (setup,
the loop, DDP glue, evaluation, checkpoints, logging; ``train_rl``).
"""
