"""Training of the CogView GPT: batches and loss, back ends (one process, torch DDP,
DeepSpeed), checkpoints with exact resume, logging, and the loop.

Nothing here imports DeepSpeed at module level: ``training.backends`` imports it
only when ``--deepspeed`` is given.
"""
