"""The GPU check: a few steps each of GRPO, SAGE, f-GRPO, the Gaussian reward model and multi-reference DPO on a
paper-scale architecture with random weights, in bf16; one JSON per recipe with throughput, memory and phase shares.

    python benchmarks/gpu/check.py                          # one H100 / H200, within about 8 minutes
    python benchmarks/gpu/check.py --arch qwen2.5-1.5b --steps 5
    python benchmarks/gpu/check.py --device cpu --out-dir /tmp/gpu-dry   # dry mode: tiny config, CPU, fp32, 1 step

Each check runs the tiny recipe of its method through `align.train` (so the trainers, rollout, rewards and timing
are the real ones) with the policy replaced by a randomly initialised model of the named architecture (Qwen2.5-0.5B
or 1.5B: their published configs) and the embedded byte-level tokenizer, whose ids all fit those vocabularies. No
weights travel: the GGUF or hub checkpoints are too large for the folder sent to an offline GPU machine (64 MiB), and
random weights cost the same FLOPs. Rewards of a random policy are mostly 0, which is fine: this measures cost only.

Writes <out-dir>/gpu_<recipe>-<arch>.json (e.g. gpu_grpo-arithmetic-qwen2.5-0.5b.json; out-dir defaults to
benchmarks/results on CUDA and has no default in the dry mode, which so never overwrites GPU results) with: steps,
seconds per step, tokens/s (perf/tokens_per_s: prompt + completion tokens trained on per second of step; null for the
reward model, whose trainer does not log it), the mean share of each logged phase (timing/*_s over timing/step_s:
generation, hint writing, reward, reference log-probs, update, ...), peak memory (CUDA: max allocated; CPU: max RSS
of the process so far) and MFU = 6 x parameters x tokens/s / peak bf16 FLOP/s (989 TFLOP/s dense, H100 and H200
SXM; null on CPU). 6N per token counts training FLOPs only, so for RL steps, whose generation costs 2N per token,
MFU is a lower bound. The first step is left out of the means when there are more (warm-up).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from align.models import _publish, build_tiny_tokenizer  # noqa: E402
from align.train import run  # noqa: E402
from tests.conftest import compose  # noqa: E402

# Published Qwen2.5 configs (config.json of Qwen/Qwen2.5-0.5B-Instruct and Qwen/Qwen2.5-1.5B-Instruct); "tiny" is the
# dry mode's.
ARCHS = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
}
PEAK_BF16_FLOPS = 989e12  # H100 / H200 SXM, dense
POLICY = ["warm_start.max_steps=0", "eval.enabled=false"]  # GRPO-family recipes: no SFT stage, no held-out eval
PAIRS = ["algorithm.data.synthetic.num_train=512", "algorithm.data.synthetic.num_eval=64"]
# recipe -> overrides that keep its check to a few steps of the recipe's own batch.
CHECKS = {
    "grpo-arithmetic-tiny": [*POLICY, "algorithm.max_completion_length=128"],
    "sage-arithmetic-tiny": [*POLICY, "algorithm.max_completion_length=128"],
    "fgrpo-arithmetic-tiny": [*POLICY, "algorithm.max_completion_length=128"],
    "reward-gaussian-prefs-tiny": PAIRS,
    "multiref-dpo-prefs-tiny": [*PAIRS, "algorithm.validation_size=64"],
}
# The dry mode on top: small batches and lengths, so every check takes seconds on a CPU.
DRY_POLICY = ["algorithm.max_completion_length=8", "trainer.per_device_train_batch_size=8",
              "algorithm.num_generations=4", "data.synthetic.num_train=64"]
DRY_PAIRS = ["trainer.per_device_train_batch_size=8",
             "algorithm.data.synthetic.num_train=128", "algorithm.data.synthetic.num_eval=16"]


def random_model(arch: str, root: Path) -> tuple[Path, int]:
    """(directory, parameter count) of a randomly initialised Qwen2 causal LM of `arch` with the embedded tokenizer,
    saved (safetensors) under root."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = Qwen2Config(**ARCHS[arch], max_position_embeddings=4096, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return _publish(model, tokenizer, root / f"random-{arch}"), sum(p.numel() for p in model.parameters())


def overrides(recipe: str, model: Path, run_dir: Path, steps: int, dry: bool) -> list[str]:
    """The command-line overrides of one check: the recipe with the random model as policy (and, for multi-reference
    DPO, as one reference next to the embedded tiny model), `steps` steps, logging every step, no checkpoints."""
    pairs = recipe.startswith(("reward", "multiref"))
    args = [f"recipe={recipe}", f"model.path={model}", f"model.dtype={'float32' if dry else 'auto'}",
            f"trainer.max_steps={steps}", "trainer.logging_steps=1", "trainer.save_steps=0",
            f"trainer.output_dir={run_dir}", *CHECKS[recipe]]
    if recipe.startswith("multiref"):
        args.append(f"algorithm.references=[{model},embedded:tiny]")
    if dry:
        args += DRY_PAIRS if pairs else DRY_POLICY
    return args


def summarize(recipe: str, arch: str, run_dir: Path, parameters: int, device: str) -> dict:
    """Per-step figures from the run's trainer_state.json (the first step, which compiles and warms up, left out
    when there are more)."""
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    steps = [e for e in history if "loss" in e and "step" in e]
    measured = steps[1:] or steps
    mean = lambda key: statistics.fmean(e[key] for e in measured) if all(key in e for e in measured) else None  # noqa: E731
    step_s = mean("timing/step_s")
    if step_s is None:  # trainers without per-step timing: the whole run's time per step
        runtime = next((e["train_runtime"] for e in history if "train_runtime" in e), None)
        step_s = runtime / len(steps) if runtime and steps else None
    tokens_per_s = mean("perf/tokens_per_s")
    shares = {key.removeprefix("timing/").removesuffix("_s"): mean(key) / step_s
              for key in sorted({k for e in measured for k in e if k.startswith("timing/")})
              if key != "timing/step_s" and mean(key) is not None and step_s}
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"recipe": recipe, "arch": arch, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "parameters": parameters, "steps": len(steps), "step_s": step_s, "tokens_per_s": tokens_per_s,
            "phase_shares": shares, "peak_memory_gib": peak / 2**30,
            "mfu": 6 * parameters * tokens_per_s / PEAK_BF16_FLOPS if device == "cuda" and tokens_per_s else None}


def result_name(recipe: str, arch: str) -> str:
    """gpu_<recipe with the architecture for 'tiny'>.json, e.g. gpu_grpo-arithmetic-qwen2.5-0.5b.json."""
    return f"gpu_{recipe.removesuffix('-tiny')}-{arch}.json"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--arch", choices=sorted(ARCHS), default=None, help="default: qwen2.5-0.5b; tiny on cpu")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per check (default 4; cpu: 1)")
    parser.add_argument("--recipes", nargs="+", choices=sorted(CHECKS), default=list(CHECKS))
    parser.add_argument("--out-dir", type=Path, default=None, help="default: benchmarks/results (cuda only)")
    args = parser.parse_args(argv)
    dry = args.device == "cpu"
    if dry and args.out_dir is None:
        parser.error("--device cpu needs --out-dir (the dry mode never writes into benchmarks/results)")
    if not dry and not torch.cuda.is_available():
        parser.error("no CUDA device; use --device cpu for the dry mode")
    arch = args.arch or ("tiny" if dry else "qwen2.5-0.5b")
    steps = args.steps or (1 if dry else 4)
    out_dir = args.out_dir or REPO / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="align-gpu-check-"))
    model, parameters = random_model(arch, work)
    results = []
    for recipe in args.recipes:
        if not dry:
            torch.cuda.reset_peak_memory_stats()
        run_dir = work / recipe
        run(compose(overrides(recipe, model, run_dir, steps, dry)))
        result = summarize(recipe, arch, run_dir, parameters, args.device)
        (out_dir / result_name(recipe, arch)).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


if __name__ == "__main__":
    main()
