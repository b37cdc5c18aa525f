"""Evaluation: lm-evaluation-harness tasks on local data, sliding-window perplexity, and recall tasks.

    scoring         teacher-forced log-probabilities and greedy flags of token sequences (the shared primitive)
    lm_eval_adapter lm-eval's model class for Hymba ("hymba") and `evaluate()` over the shipped tasks
    task_data       local evaluation files -> the documents of lm-eval's standard task definitions (tasks/*.yaml)
    perplexity      sliding-window perplexity of a text
    recall          MQAR, needle in a haystack (token level and text), the kv-pairs sets; their scoring
    results         JSON, markdown tables and plots

Submodules are imported on use: lm-eval (and its dependencies) load only for `lm_eval_adapter`.
"""
