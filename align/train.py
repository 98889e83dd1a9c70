"""The one entry point: compose the config, check it, open the run, build the method, train, report.

    python -m align.train recipe=<name> [key=value ...]              # one process
    accelerate launch --config_file launch/accelerate/zero3.yaml -m align.train recipe=<name> ...
    align-train recipe=/path/to/my_recipe.yaml trainer.max_steps=10   # a recipe of your own

A run reads as a sequence of steps, each of which fails early with a message that names the problem:
config validation -> tokenizer -> the method's data and reward sources -> run directory -> [SFT warm start] ->
the method's models and trainer -> train -> save + report. What `algorithm=<name>` runs is its entry in
`align.registry` (docs/architecture.md). Everything a run writes lands in one run directory shared by all ranks: the
resolved config, checkpoints, the final model (safetensors, loadable with `from_pretrained`), held-out results and a
plot.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from align.audit.prompts import check_eval_prompt_sets
from align.cluster import adopt_slurm_environment
from align.compose import RECIPES_DIR, RecipeError, check_config, resolve_recipe_args
from align.config import CONFIGS_DIR, AlignConfig, ConfigError, validate
from align.console import help_text, quiet_dependencies
from align.methods import register_configs
from align.registry import method_named
from align.run_dir import RunFinished, check_run_dir
from align.tracking import redact_text


def run(cfg: DictConfig) -> dict:
    """Train as configured; return a summary (run_dir, the final model path, held-out figures before/after).

    Stop signals are handled from here to the end (`align.preemption`): a stopped run keeps what it can resume
    from and returns `{"stopped_during": phase, "kept": what, "exit_code": status}` instead."""
    config: AlignConfig = OmegaConf.to_object(cfg)
    validate(config)
    check_run_dir(config)
    check_eval_prompt_sets(config.eval)
    quiet_dependencies(config.logger.backend)  # first: some dependency noise is printed at import
    # Imported once the config is valid: they load torch, transformers and TRL (seconds), and a config error must
    # print at once.
    from align import runs
    from align.preemption import STOP, Stopped

    with STOP.installed():
        try:
            summary = _run(config, cfg)
        except Stopped as stopped:
            return runs.stopped_summary(cfg, stopped)
        if STOP.signum and "final_model" in summary:  # it came after the last boundary: the run completed anyway
            if runs.distributed_state().is_main_process:
                print(f"[align] received {signal.Signals(STOP.signum).name} while finishing; the run is complete "
                      f"(final model: {summary['final_model']}), nothing to resume", flush=True)
        return summary


def _run(config: AlignConfig, cfg: DictConfig) -> dict:
    """The run's steps, in order (see the module docstring)."""
    # Imported once the config is valid (see `run`): these load torch, transformers and TRL.
    from transformers import set_seed

    from align import runs
    from align.models import check_lora_targets, load_tokenizer, resolve_model_path
    from align.preemption import STOP
    from align.progress import show_progress
    from align.warm_start import starting_model

    model = config.model
    resolve_model_path(model.path)  # a missing local path fails here, before anything is loaded
    if model.lora.r:
        check_lora_targets(model.path, model.lora.target_modules, revision=model.revision,
                           trust_remote_code=model.trust_remote_code)
    # Seeded before any model is built: freshly initialised weights (a reward model's head, LoRA adapters) depend on
    # trainer.seed alone, not on whatever ran before in this process (the Trainer seeds only once it exists).
    set_seed(config.trainer.seed)
    method = method_named(config.algorithm.name)
    steps = method.load_steps()
    tokenizer = load_tokenizer(model.path, revision=model.revision, trust_remote_code=model.trust_remote_code,
                               chat_template=model.chat_template)
    prepared = steps.prepare(config, tokenizer)

    run = runs.open_run(config, cfg, prepared.detail)
    STOP.check(lambda: runs.kept(run.dir))  # a signal during start-up stops before any model is loaded
    run.model_path = starting_model(config, tokenizer, prepared.train_dataset, run)
    built = steps.build(config, tokenizer, prepared, run)
    show_progress(built.trainer, method.progress)
    return runs.train_and_report(built, method, tokenizer, config, run)


register_configs()


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors caused by the user's config, data or disk: reported as one readable line, exit code 2.

    Looked up only in modules already imported: an error whose module never loaded cannot have been raised, and
    importing those modules (torch, datasets) would add seconds to printing a config error."""
    elsewhere = (("align.data", "DataError"), ("align.models", "ModelLoadError"),
                 ("align.rewards", "RewardConfigError"), ("align.rewards", "RewardError"),
                 ("align.checkpoints", "DiskFullError"), ("align.checkpoints", "CheckpointStateError"))
    return ConfigError, RecipeError, *(getattr(sys.modules[module], name) for module, name in elsewhere
                                       if module in sys.modules)


@hydra.main(config_path=str(CONFIGS_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    adopt_slurm_environment()  # under srun / the Slurm launcher: one process per task, rendezvous from Slurm
    try:
        summary = run(cfg)
    except RunFinished as finished:
        print(finished, flush=True)
        return
    except _user_errors() as err:
        print_error(err)
        sys.exit(2)
    if "stopped_during" in summary:
        # Exit, even with status 0 after a requeue: a normal return would make submitit record the point as done.
        shutdown_distributed()
        sys.exit(summary["exit_code"])


def print_error(err: Exception) -> None:
    """The one line a user error ends with, credentials redacted: a message may quote an override or a value."""
    print(f"align: error: {redact_text(str(err))}", file=sys.stderr, flush=True)


def shutdown_distributed() -> None:
    """Tear the process group down explicitly: left to interpreter exit, gloo's threads can abort the process
    ("terminate called without an active exception") after all work is done, failing the launch."""
    import torch.distributed as dist  # here, not at the top: torch takes seconds, and a config error must not wait

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main() -> None:
    """Console entry point (`align-train`, `python -m align.train`)."""
    if not (CONFIGS_DIR / "config.yaml").is_file():
        sys.exit(f"align: error: the Hydra configs were not found at {CONFIGS_DIR}; reinstall align (a clone: "
                 f"pip install -e .; see README.md).")
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(help_text(CONFIGS_DIR, RECIPES_DIR, Path(__file__).resolve().parent.parent / "docs"))
        return
    try:
        sys.argv = [sys.argv[0], *resolve_recipe_args(sys.argv[1:])]
        flags = {arg for arg in sys.argv[1:] if arg.startswith("-")}
        if flags <= {"-m", "--multirun"}:  # other flags (--cfg, --info, ...) do not run: Hydra handles them
            adopt_slurm_environment()  # under srun: WORLD_SIZE for the batch arithmetic
            check_config([arg for arg in sys.argv[1:] if arg not in flags], multirun=bool(flags))
        _hydra_main()
        shutdown_distributed()
    except (RecipeError, ConfigError) as err:
        print_error(err)
        sys.exit(2)
    except KeyboardInterrupt:  # a second Ctrl-C (the first one stops at a point that keeps work), or one before run
        print(f"[align] stopped at once by Ctrl-C during {_current_phase()}; kept: the complete checkpoints only "
              f"(resume=auto sets aside a save cut short); run again with resume=auto to continue", flush=True)
        sys.exit(130)


def _current_phase() -> str:
    # Not imported for it: before a run starts, align.preemption (torch) may not be loaded yet.
    preemption = sys.modules.get("align.preemption")
    return preemption.STOP.phase if preemption else "start-up"


if __name__ == "__main__":
    main()
