"""align: align language models with RL and preference optimization (Hydra-configured TRL trainers).

Entry point: `python -m align.train recipe=<name> [overrides]`; see README.md.
"""

__version__ = "0.1.0"
