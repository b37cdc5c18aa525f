"""`python -m hymba.hf.harness ARGS`: lm-evaluation-harness's own command line (`lm_eval ARGS`), run after
registering Hymba with transformers, so that lm-eval's built-in `hf` model loads Hymba checkpoints:

    python -m hymba.hf.harness --model hf --model_args pretrained=DIR,dtype=float32 --tasks hellaswag

(The plain `lm_eval` command never imports hymba, so transformers would not know model_type "hymba".)
"""

from __future__ import annotations

import sys

from .registration import register


def main(argv: list[str] | None = None) -> None:
    """Register Hymba, then hand `argv` (default: the process's arguments) to lm-eval's command line."""
    register()
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = ["lm_eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
