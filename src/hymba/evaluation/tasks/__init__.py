"""lm-evaluation-harness task definitions for the local evaluation files (YAML, shipped with the package).

Each task states lm-eval's standard prompt and metrics for its benchmark; the documents come from
`hymba.evaluation.task_data.local_dataset`, which reads the files of a data folder passed as metadata
`data_dir`. Every task holds one split, `test` (the split lm-eval evaluates for that benchmark); few-shot
examples are drawn from it with the evaluated item left out, except MMLU's, which come from its dev split.

    lm_eval --include_path $(python -c "import hymba.evaluation.tasks as t; print(t.TASKS_DIR)") \\
            --metadata '{"data_dir": "path/to/eval"}' ...   (or `hymba eval`, which does this for you)
"""

import os

TASKS_DIR = os.path.dirname(os.path.abspath(__file__))
