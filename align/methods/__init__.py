"""align's methods, one package each, registered by name in `align.registry` when imported.

A package holds its config dataclass and checks (`config.py`), its pure math (`math.py`, torch only), its TRL trainer
(`trainer.py`) and the two run steps `align.train` calls (`steps.py`); its `__init__` registers it. Adding a method is
one package like these and one line below (docs/architecture.md); a method of your own outside align registers
itself the same way and is imported by naming its module in ALIGN_METHODS (comma-separated module names).
"""

from __future__ import annotations

import importlib
import os

from hydra.core.config_store import ConfigStore

from align.config import CONFIGS_DIR, AlignConfig

# The registry lines: importing a method's package registers it.
from align.methods import fgrpo, grpo, multiref_dpo, reward_model, sage, sft  # noqa: F401
from align.registry import METHODS


def import_user_methods() -> None:
    """Import the modules named in ALIGN_METHODS, so the methods they register can be run by name."""
    for module in filter(None, (name.strip() for name in os.environ.get("ALIGN_METHODS", "").split(","))):
        importlib.import_module(module)


def register_configs() -> None:
    """Store the run schema and every registered method's config in Hydra's ConfigStore: `algorithm/<name>_schema`,
    which `configs/algorithm/<name>.yaml` builds on, and `algorithm/<name>` itself where there is no such file (a
    method of one's own then needs no YAML)."""
    import_user_methods()
    store = ConfigStore.instance()
    store.store(name="align_schema", node=AlignConfig)
    for name, method in METHODS.items():
        store.store(group="algorithm", name=f"{name}_schema", node=method.config)
        if not (CONFIGS_DIR / "algorithm" / f"{name}.yaml").is_file():
            store.store(group="algorithm", name=name, node=method.config)
