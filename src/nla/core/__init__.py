"""Pure math and stock-module hooks, no I/O: metrics (``mse_nrm``, ``fve_nrm``), the explanation tag rules
(``text``), activation injection (``inject``), GRPO/KL math (``rl_math``) and the anatomy of an HF LM
(``modules``).
"""
