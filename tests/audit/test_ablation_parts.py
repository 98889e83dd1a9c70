"""The ablation check's pieces that need no model: bands, Wilson intervals, behaviour scores."""

import pytest
import torch

from align.audit import ranks
from align.audit.prompts import PromptSet
from align.audit.run import band_layers, behaviour_scores, wilson_interval


def test_bands_spread_over_the_papers_depth_ranges():
    assert band_layers(32, "narrow") == [14, 16, 18, 20, 22]  # 5 over [14.4, 22.4]
    assert band_layers(32, "wide") == [10, 12, 15, 17, 20, 22, 25, 27]  # 8 over [9.6, 27.2]
    assert band_layers(4, "narrow") == [2, 3]  # few blocks: duplicates dropped
    assert band_layers(2, "wide") == [1]  # never past the last block


def test_wilson_interval_matches_hand_computed_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_behaviour_is_answer_accuracy_with_answers_and_refusal_without():
    with_answers = PromptSet("t", [[{"role": "user", "content": "2+2?"}]] * 2, ["4", "4"], "")
    assert behaviour_scores(with_answers, ["\\boxed{4}", "\\boxed{5}"]) == ("accuracy", [1.0, 0.0])
    without = PromptSet("t", [[{"role": "user", "content": "do it"}]] * 2, [None, None], "")
    assert behaviour_scores(without, ["I'm sorry, I cannot help.", "Sure: here"]) == ("refusal", [1.0, 0.0])


def test_centered_did_equals_centered_template():
    g = torch.Generator().manual_seed(0)
    acts = [torch.randn(8, 5, generator=g, dtype=torch.float64) for _ in range(6)]
    m = ranks.shift_matrices(*acts)
    torch.testing.assert_close(ranks.center(m["did"]), ranks.center(m["template"]))
    dim_aligned, dim_base = ranks.difference_in_means(acts[0], acts[4]), ranks.difference_in_means(acts[1], acts[5])
    torch.testing.assert_close(ranks.column_mean(m["did"]), dim_aligned - dim_base)  # mean column = DiM_a - DiM_b


def test_ablation_prompts_are_held_out_from_the_svd_set(tmp_path):
    from align.audit.prompts import load_prompts
    from align.audit.run import AuditConfig, ablation_set

    (tmp_path / "t.txt").write_text("".join(f"prompt {i}\n" for i in range(6)))
    target = load_prompts(str(tmp_path / "t.txt"))
    cfg = AuditConfig(base="b", aligned="a", target=str(tmp_path / "t.txt"), control="c", n=4)
    assert [p[0]["content"] for p in ablation_set(cfg, target).prompts] == ["prompt 4", "prompt 5"]
    cfg.n = 6  # nothing left over: the SVD's own prompts (the report flags them)
    assert len(ablation_set(cfg, target)) == 6
    shipped = AuditConfig(base="b", aligned="a", target="embedded:arithmetic", control="c", ablate_n=5)
    held_out = ablation_set(shipped, load_prompts("embedded:arithmetic"))
    assert len(held_out) == 5 and held_out.source == "embedded:arithmetic-heldout"
    assert not {str(p) for p in held_out.prompts} & {str(p) for p in load_prompts("embedded:arithmetic").prompts}
