"""The run's summary plot: reward and held-out accuracy over optimizer steps."""

from __future__ import annotations

from pathlib import Path


def plot_training_curves(log_history: list[dict], heldout: list[tuple[int, float]], path: Path,
                         title: str = "") -> Path:
    import matplotlib  # here, not at the top: only the plot needs it, and it takes about a second to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (after the backend is chosen)

    reward = [(e["step"], e["reward"]) for e in log_history if e.get("reward") is not None and "step" in e]
    loss = [(e["step"], e["loss"]) for e in log_history if e.get("loss") is not None and "step" in e]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    series, label = (reward, "mean reward") if reward else (loss, "training loss")
    if series:
        steps, values = zip(*series)
        left.plot(steps, values, color="tab:blue", alpha=0.3, label="per step")
        window = max(1, len(values) // 10)
        smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                  for i in range(len(values))]
        left.plot(steps, smooth, color="tab:blue", label=f"mean of last {window}")
        left.legend(loc="lower right")
    left.set(xlabel="optimizer step", ylabel=label, title=label)
    if heldout:
        right.plot(*zip(*heldout), marker="o", color="tab:green")
    right.set(xlabel="optimizer step", ylabel="accuracy", title="held-out accuracy (greedy, no hint)", ylim=(0, 1))
    for axis in (left, right):
        axis.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
