"""Hydra's basic sweeper, writing multirun.yaml with credentials redacted (hydra/sweeper=align, the default in
configs/config.yaml). Hydra only instantiates plugins that live in the `hydra_plugins` namespace package."""

from __future__ import annotations

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from omegaconf import DictConfig, OmegaConf


class RedactingSweeper(BasicSweeper):
    """Only the copy of the config that the sweeper writes (<sweep dir>/multirun.yaml) is redacted: the launcher
    keeps the real one and composes every point from the real overrides."""

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        # Imported here: Hydra imports every plugin module at start-up, before a config error can be reported.
        from align.tracking import redact, redact_override, redact_text

        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        container = redact(OmegaConf.to_container(config, resolve=False, enum_to_str=True))
        hydra = container["hydra"]
        for kind in ("hydra", "task"):
            hydra["overrides"][kind] = [redact_override(o) for o in hydra["overrides"][kind]]
        hydra["job"]["override_dirname"] = redact_text(hydra["job"]["override_dirname"])  # the overrides, joined
        self.config = OmegaConf.create(container)
        OmegaConf.copy_cache(from_config=config, to_config=self.config)  # the same ${now:} in hydra.sweep.dir
