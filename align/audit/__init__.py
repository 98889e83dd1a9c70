"""Effective-rank audit: what did training change in the model's activations, and how concentrated is the change?

Following Y. Nakamura, "An Effective-Rank Audit of Alignment-Induced Activation Shifts" (arXiv 2605.24583; v3
"Measuring ... Correctly"): residual-stream activations of the base and the aligned model at every block's output,
last prompt token, on a target and a control prompt set, with and without the chat template, form four d x n shift
matrices per layer (naive, template-controlled, aligned-only, difference-in-differences); their energy rank rank_eps
(the least k holding 1 - eps of the squared singular values) and rho_eps = rank_eps / d say how concentrated the shift
is, and cosines with a reference direction say whether its top directions carry a known one. An optional ablation
projects the top-k directions out of the aligned model and measures behaviour item by item, against random
k-frames. rho is a fragility diagnostic, not safety-specific, not a target.

Layout: `ranks` (the math, torch only), `activations` (block hooks: capture and projection), `prompts` (prompt files
and the shipped sets), `run` (the audit of one pair), `report` (audit.json, audit.md, PNGs), `cli`
(`python -m align.audit`). See docs/audit.md.

Decisions the paper leaves open (or where we depart from its code), recorded here:
- rank_eps has a 1e-12 relative slack on the threshold, so flat spectra give ceil((1 - eps) r); rank_eps(0) = 0.
- The numerical eps-rank (#{s_i > 1e-3 s1}) and the Roy-Vetterli effective rank (exp of the entropy of s_i / sum s_j;
  0 for a zero matrix) are separate, named columns, never mixed with rank_eps.
- Activations come from forward hooks on the decoder blocks, not `hidden_states[-1]` (after the final norm in Hugging
  Face models; the paper's layer means include it). Stored as float32 on the CPU, per batch; SVDs in float64; every
  singular value is kept in audit.json (the paper kept 30).
- Chat = the aligned tokenizer's template with the generation prompt, for both models, no special tokens added (the
  paper's code doubled the BOS); raw = the prompt's user turns joined by blank lines (system turns are part of the
  chat format), tokenized with the tokenizer's own special tokens (e.g. Llama's BOS). No truncation (the paper's code
  cut at 128 tokens); left padding, position ids counting real tokens only, so batching does not change activations.
- Prompt sets are distinct prompts shipped as files (the paper padded 109 distinct ones to 200 with suffixed copies);
  both sets are cut to their first n (default 64). The shipped pair is the embedded chat arithmetic task (3-digit
  addition word problems with its system prompt, answers included) against neutral chat requests, plus 32 held-out
  word problems for the ablation check.
- Difference in differences assumes that without a target-specific effect, training moves the target and control
  means alike. Centered M_DiD equals centered M_template, so its centered rank is reported for both anyway.
- Reference direction r_l: the aligned model's difference in means (chat, target minus control) at layer l, or a
  user .npy (shape (d,) or (L, d)). Besides |cos(u1, r)| and |cos(u1, mbar)|: max_{i<=k} |cos(u_i, r)| and
  ||U_k^T r|| / ||r|| at k = min(rank_eps, 10) (at least 1); residual share ||M_c||^2 / ||M||^2. Undefined values
  (a zero matrix or reference) are NaN in memory and null in audit.json.
- A fifth row, template_control = M_template on the control set, shows how concentrated a non-target shift is.
- The rank baseline (spec: LRH baseline), opt-in with --contrast FIRST SECOND: a sixth row, contrast = the base
  model's raw H(first_i) - H(second_i) over paired prompts (uncentered, like M_template; the first n pairs, so the
  same n as the audit: rank grows with n). Shipped pair: 64 yes/no questions and the matching statements
  (embedded:questions, embedded:statements), built from 16 nouns x 4 adjectives (the paper used 50 translation and
  50 question/statement pairs; translation pairs are not shipped, since the embedded models are English-only).
- Ablation: on the aligned model, h <- h - U U^T h at every position (generated tokens too) on the blocks of a band
  (narrow: 5 layers spread over [0.45 L, 0.70 L]; wide: 8 over [0.30 L, 0.85 L]; rounded, duplicates dropped, so a
  model with few blocks gets fewer), U = top-k left singular vectors of that layer's M_template and of M_DiD,
  k <= min(d, n); singles u_2..u_N (N = 3 by default; u_1 is k = 1). Null: a Haar-random orthonormal k-frame per
  layer (QR of a Gaussian), seeds 0..S-1 (S = 2 by default), shared by both sources. Behaviour: greedy decoding
  (align.evaluation.generate_greedy, 48 new tokens by default) on held-out prompts (the shipped held-out set for the
  shipped target, else the target file's prompts after the first n; the SVD's own only when there are no others,
  flagged `held_out: false`); prompts with answers are scored
  by the boxed-answer verifier (`accuracy`), prompts without by a refusal-phrase match (`refusal`); rates with Wilson
  95% intervals, the exact one-sided McNemar p of align.gate against the unablated model, and per-prompt records in
  align.gate's format (ablation/<run>.jsonl).
- Weights load one model at a time (base, then aligned, then aligned again for the ablation), each in --dtype
  (float32 by default; bfloat16 for 7-8B models on a GPU).
"""
