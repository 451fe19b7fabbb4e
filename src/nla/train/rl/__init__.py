"""Joint RL: GRPO on the AV with rewards from the current AR, which keeps training on the rollouts."""
