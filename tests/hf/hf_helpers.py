"""What the transformers-integration tests share: the release's folders and a small Hymba config with the
release's vocabulary is `helpers.small_lm_config` (a module of its own: several test folders have a conftest.py, so `import conftest` would be
ambiguous)."""

import os

from helpers import SHARED

RELEASE = os.path.join(SHARED, "hymba-1.5b")
GOLDEN = os.path.join(SHARED, "golden", "hymba-toy")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
