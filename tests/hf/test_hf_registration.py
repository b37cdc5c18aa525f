"""Registration with transformers' Auto classes: lazy (`import hymba` imports no transformers), complete once
the Auto modules are imported, immediate when they already are, and refused by name on transformers < 5."""

import os
import subprocess
import sys
import textwrap

import pytest

import hymba.hf
from hymba.hf import registration

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


def test_import_hymba_imports_no_transformers_and_registers_on_first_use():
    """In a fresh interpreter: `import hymba` leaves transformers alone; importing AutoConfig registers the config
    (still without transformers' modeling code); AutoModelForCausalLM and AutoTokenizer register the rest."""
    script = textwrap.dedent("""
        import sys
        import hymba
        assert "transformers" not in sys.modules, "import hymba imported transformers"
        from transformers import AutoConfig
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        assert CONFIG_MAPPING["hymba"].__name__ == "HymbaHFConfig"
        assert "transformers.modeling_utils" not in sys.modules
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
        from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING
        config = CONFIG_MAPPING["hymba"]
        assert MODEL_FOR_CAUSAL_LM_MAPPING[config].__name__ == "HymbaHFForCausalLM"
        assert TOKENIZER_MAPPING[config].__name__ == "HymbaTokenizer"
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": os.path.abspath(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_install_registers_at_once_when_transformers_is_imported(monkeypatch):
    for name in registration._REGISTRATIONS:
        __import__(name)
    done = []
    monkeypatch.setattr(registration, "_REGISTRATIONS",
                        {name: (lambda module, name=name: done.append(name)) for name in registration._REGISTRATIONS})
    hymba.hf.install()
    assert sorted(done) == sorted(registration._REGISTRATIONS)  # (this process imported them all already)
    assert not any(isinstance(f, registration._RegisterAfterImport) for f in sys.meta_path)


def test_older_transformers_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(registration, "transformers_version", lambda: (4, 46))
    with pytest.raises(hymba.hf.TransformersVersionError, match="transformers >= 5, found 4.46"):
        hymba.hf.register()
    with pytest.raises(hymba.hf.TransformersVersionError, match="transformers >= 5"):
        hymba.hf.HymbaHFForCausalLM  # noqa: B018  (the lazy attribute checks too)
    monkeypatch.setattr(registration, "transformers_version", lambda: None)
    with pytest.raises(hymba.hf.TransformersVersionError, match=r"hymba\[hf\]"):
        hymba.hf.check_transformers()
