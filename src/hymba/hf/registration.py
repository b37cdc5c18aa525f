"""Registering model_type "hymba" with transformers' Auto classes, and doing it lazily.

Importing transformers' model classes costs seconds (transformers.modeling_utils), which `import hymba` should
not pay for programs that never touch transformers (the CLI, training, evaluation). So `import hymba` only
installs an import hook (`install`): when transformers' Auto modules are first imported, by whoever imports
them, the matching registration runs right after each one has loaded:

    transformers.models.auto.configuration_auto -> AutoConfig:           "hymba" -> HymbaHFConfig
    transformers.models.auto.modeling_auto      -> AutoModelForCausalLM: HymbaHFConfig -> HymbaHFForCausalLM
    transformers.models.auto.tokenization_auto  -> AutoTokenizer:        HymbaHFConfig -> HymbaTokenizer

If they are already imported, it registers at once. `register()` does all three now, explicitly.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from collections.abc import Callable
from types import ModuleType

from ..errors import HymbaError

MIN_TRANSFORMERS = (5, 0)
_AUTO = "transformers.models.auto."


class TransformersVersionError(HymbaError, ImportError):
    """transformers is missing, or older than the integration needs."""


def transformers_version() -> tuple[int, ...] | None:
    """The installed transformers' (major, minor), from its metadata (nothing imported); None if absent."""
    import importlib.metadata  # (here: ~30 ms of email parsing that `import hymba` need not pay)

    try:
        version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_transformers() -> None:
    """Raise TransformersVersionError unless transformers >= 5 is installed."""
    version = transformers_version()
    if version is None:
        raise TransformersVersionError("hymba's transformers integration needs transformers >= 5: "
                                       "pip install 'hymba[hf]'")
    if version < MIN_TRANSFORMERS:
        raise TransformersVersionError(f"hymba's transformers integration needs transformers >= 5, found "
                                       f"{'.'.join(map(str, version))}: pip install -U 'transformers>=5'")


def register_config(configuration_auto: ModuleType) -> None:
    """AutoConfig: model_type "hymba" -> HymbaHFConfig."""
    from .configuration import HymbaHFConfig

    configuration_auto.AutoConfig.register("hymba", HymbaHFConfig, exist_ok=True)


def register_model(modeling_auto: ModuleType) -> None:
    """AutoModelForCausalLM: HymbaHFConfig -> HymbaHFForCausalLM (imports transformers' modeling code)."""
    from .configuration import HymbaHFConfig
    from .modeling import HymbaHFForCausalLM

    modeling_auto.AutoModelForCausalLM.register(HymbaHFConfig, HymbaHFForCausalLM, exist_ok=True)


def register_tokenizer(tokenization_auto: ModuleType) -> None:
    """AutoTokenizer maps the config to HymbaTokenizer, and is told that the tokenizer_class a Hymba checkpoint
    names ("LlamaTokenizer") is not the one to use: transformers' own table for models whose files name the
    wrong class (MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS, looked up through TOKENIZER_MAPPING_NAMES)."""
    from .configuration import HymbaHFConfig
    from .tokenization import HymbaTokenizer

    tokenization_auto.AutoTokenizer.register(HymbaHFConfig, tokenizer_class=HymbaTokenizer, exist_ok=True)
    try:
        tokenization_auto.TOKENIZER_MAPPING_NAMES["hymba"] = HymbaTokenizer.__name__
        tokenization_auto.MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS.add("hymba")
    except AttributeError as e:
        raise TransformersVersionError(f"transformers' AutoTokenizer changed ({e}): it would load a Hymba checkpoint "
                                       "with its own LlamaTokenizer, which encodes spaces unlike SentencePiece; "
                                       "use HymbaTokenizer.from_pretrained(dir)") from None


_REGISTRATIONS: dict[str, Callable[[ModuleType], None]] = {
    _AUTO + "configuration_auto": register_config,
    _AUTO + "modeling_auto": register_model,
    _AUTO + "tokenization_auto": register_tokenizer,
}


def register() -> None:
    """Register Hymba with AutoConfig, AutoModelForCausalLM and AutoTokenizer now (imports transformers)."""
    check_transformers()
    for name, registration in _REGISTRATIONS.items():
        registration(importlib.import_module(name))


def install() -> None:
    """Register with each of transformers' Auto modules as soon as it is imported (now, for those already
    imported). Without transformers this does nothing; its version is checked when a registration runs."""
    if importlib.util.find_spec("transformers") is None:
        return
    pending = {}
    for name, registration in _REGISTRATIONS.items():
        if name in sys.modules:
            _run(registration, sys.modules[name])
        else:
            pending[name] = registration
    if pending and not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport(pending))


def _run(registration: Callable[[ModuleType], None], module: ModuleType) -> bool:
    """A registration that fails warns (naming the transformers version) instead of breaking the user's import
    of transformers; the test suite checks that none does. Returns whether it ran."""
    try:
        check_transformers()
        registration(module)
        return True
    except Exception as e:  # an older or incompatible transformers
        import importlib.metadata

        warnings.warn(f"hymba could not register with transformers {importlib.metadata.version('transformers')} "
                      f"({registration.__name__}: {type(e).__name__}: {e}); AutoModel/AutoTokenizer will not know "
                      "Hymba checkpoints", RuntimeWarning, stacklevel=2)
        return False


class _RegisterAfterImport:
    """A meta-path finder (importlib.abc.MetaPathFinder's protocol, without the base class, whose import costs
    ~15 ms) that lets the regular finders find the watched modules and wraps their loaders so that the
    registration runs right after the module has executed; it removes itself once all have run."""

    def __init__(self, pending: dict[str, Callable[[ModuleType], None]]):
        """`pending`: module name -> the registration to run once that module has loaded."""
        self.pending = pending

    def find_spec(self, fullname, path, target=None):
        """The regular spec of a watched module, its loader wrapped; None (not ours) for every other module."""
        if fullname not in self.pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _LoaderThenRegister(spec.loader, self._done(fullname))
        return spec

    def _done(self, fullname: str) -> Callable[[ModuleType], None]:
        """The callback for `fullname`: its registration, then this finder leaves once nothing is pending."""

        def after(module: ModuleType) -> None:
            registration = self.pending.pop(fullname, None)
            if registration is not None and not _run(registration, module):
                self.pending.clear()  # (one warning is enough)
            if not self.pending and self in sys.meta_path:
                sys.meta_path.remove(self)

        return after


class _LoaderThenRegister:
    """The module's own loader, then a callback; everything else (source, resources) is the loader's."""

    def __init__(self, loader, after: Callable[[ModuleType], None]):
        """`loader`: the module's own loader; `after`: called with the module once it has executed."""
        self._loader, self._after = loader, after

    def create_module(self, spec):
        """The loader's own."""
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        """Run the module, then the callback."""
        self._loader.exec_module(module)
        self._after(module)

    def __getattr__(self, name):
        """Everything else (get_source, resources, ...) is the loader's."""
        return getattr(self._loader, name)
