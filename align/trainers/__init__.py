"""One module per method. Each exposes a `build(...)` that turns config + built objects into a TRL trainer."""

from align.trainers.common import training_arguments
from align.trainers.grpo import AlignGRPOTrainer

__all__ = ["AlignGRPOTrainer", "training_arguments"]
