"""lm-evaluation-harness on Hymba checkpoints, offline.

`HymbaLM` is lm-eval's model interface (`lm_eval.api.model.TemplateLM`) for a HymbaForCausalLM and its
tokenizer: loglikelihood and rolling loglikelihood go through `scoring.score_targets` (batched, right padded,
exact for any padding), generate_until through the continuous-batching engine (`hymba.engine.LLM`, all of
a call's requests in one engine). It is registered as lm-eval model "hymba", so
`lm_eval.simple_evaluate(model="hymba", model_args={"pretrained": DIR})` works once this module is imported.

`evaluate()` runs the task definitions shipped in `hymba/evaluation/tasks` on a local data folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..engine import LLM, CompletionOutput, Engine, SamplingParams, load_model_and_tokenizer
from .scoring import score_targets
from .task_data import resolve_data_dir
from .tasks import TASKS_DIR

OFFLINE_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_EVALUATE_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}

log = logging.getLogger(__name__)


def go_offline() -> None:
    """No network for anything lm-eval pulls in (datasets, huggingface_hub, evaluate): set before importing it."""
    os.environ.update(OFFLINE_ENV)


go_offline()

# lm-eval after the offline switches
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.model import TemplateLM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.tasks._index import Kind, TaskIndex  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402


@register_model("hymba")
class HymbaLM(TemplateLM):
    """A Hymba checkpoint for lm-eval. Pass `pretrained` (a checkpoint directory with its tokenizer), or an
    already built `model` and `tokenizer`.

    `max_length` (default: the config's max_position_embeddings less the meta tokens) bounds the text tokens
    the model reads per request; longer contexts are cut from the left, as lm-eval's HF model does, and
    counted in `truncated_requests`. `batch_size`: sequences per scoring forward, and requests decoding at once
    in generate_until."""

    def __init__(self, pretrained: str | None = None, model=None, tokenizer=None, tokenizer_dir: str | None = None,
                 batch_size: int | str | None = 8, max_length: int | str | None = None, device: str | None = "auto",
                 dtype: str = "auto", max_gen_toks: int | str = 256, **unused: Any):
        super().__init__()
        if (pretrained is None) == (model is None):
            raise ValueError("HymbaLM needs either pretrained=DIR or model= (with tokenizer=)")
        if model is None:
            model, tokenizer = load_model_and_tokenizer(pretrained, tokenizer_dir, device=device or "auto",
                                                        dtype=dtype)
        elif tokenizer is None:
            raise ValueError("HymbaLM(model=...) needs its tokenizer= as well")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.pretrained = pretrained
        self._device = model.device
        self.batch_size = _positive_int(batch_size, "batch_size", default=8)
        config = model.config
        self._max_length = _positive_int(max_length, "max_length",
                                         default=config.max_position_embeddings - config.num_memory_tokens)
        self.max_gen_toks = _positive_int(max_gen_toks, "max_gen_toks", default=256)
        self.truncated_requests = 0
        self._llm: LLM | None = None
        ignored = {k: v for k, v in unused.items() if v is not None and k not in ("max_batch_size",)}
        if ignored:
            log.warning("HymbaLM ignores arguments %s", sorted(ignored))

    # ---- what TemplateLM needs ------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "source", "tokenizer")).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """The tokenizer's own rule (BOS for Hymba) unless told otherwise; no second BOS on a string that
        already starts with the BOS text."""
        if add_special_tokens is None:
            bos = self.tokenizer.bos_token
            add_special_tokens = not (bos and string.startswith(bos))
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens)

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The checkpoint's own chat template (instruct models), for lm-eval's --apply_chat_template."""
        return self.tokenizer.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template if chat_template else None

    def get_model_info(self) -> dict:
        return {"model_dir": self.pretrained, "model_num_parameters": self.model.num_parameters(),
                "model_dtype": str(self.model.dtype), "device": str(self.model.device),
                "max_length": self.max_length, "truncated_requests": self.truncated_requests}

    # ---- loglikelihood ----------------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: [((context, continuation) or None, context ids, continuation ids), ...]."""
        scored: list[tuple[list[int], int]] = []
        where: list[int] = []
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for i, (_, ctx, cont) in enumerate(requests):
            if not cont:  # nothing to score (an empty continuation)
                results[i] = (0.0, True)
                continue
            if len(cont) > self.max_length:
                raise ValueError(f"a continuation of {len(cont)} tokens is longer than max_length="
                                 f"{self.max_length}: it cannot be scored in one window")
            whole = list(ctx) + list(cont)
            if len(whole) - 1 > self.max_length:
                whole = whole[-(self.max_length + 1):]
                self.truncated_requests += 1
            scored.append((whole, len(whole) - len(cont)))
            where.append(i)
        with tqdm(total=len(scored), disable=disable_tqdm, desc="loglikelihood") as bar:
            scores = score_targets(self.model, scored, batch_size=self.batch_size, max_length=self.max_length,
                                   progress=lambda done, total: bar.update(done - bar.n))
        for i, s in zip(where, scores):
            results[i] = (s.total, s.all_greedy)
        for (key, _, _), answer in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each string scored whole, with no truncation: disjoint windows of up to max_length tokens, each token
        predicted once, the first conditioned on the BOS token (lm-eval's rolling-window rule)."""
        windows, owner = [], []
        for n, (string,) in enumerate(req.args for req in requests):
            tokens = self.tok_encode(string, add_special_tokens=False)
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                    context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[n] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---- generation -----------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Every request through one continuous-batching engine: greedy (or sampled, if a task asks), stopped
        at the task's `until` strings or EOS; the returned text ends before the first stop string. A prompt
        longer than max_length less the new tokens loses its start."""
        eos_text = self.tokenizer.decode([self.eot_token_id], skip_special_tokens=False) \
            if self.eot_token_id is not None else None
        prompts, params, untils = [], [], []
        for req in requests:
            kwargs = normalize_gen_kwargs(dict(req.args[1]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_new = kwargs.pop("max_gen_toks")
            if max_new >= self.max_length:
                raise ValueError(f"the task asks for {max_new} new tokens, but max_length is {self.max_length}")
            prompts.append(self.tok_encode(req.args[0])[-(self.max_length - max_new):])
            params.append(self._sampling_params(kwargs, max_new, until))
            untils.append(until)
        outputs = self._run_engine(prompts, params, disable_tqdm)
        texts = []
        for req, out, until in zip(requests, outputs, untils):
            new = out.token_ids
            if out.finish_reason == "stop" and new and new[-1] in self._end_ids():
                new = new[:-1]  # the end-of-sequence token is not text
            text = self.tokenizer.decode(new)
            text = text[:min((text.find(s) for s in until if s and s in text), default=len(text))]
            texts.append(text)
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts

    def _end_ids(self) -> set[int]:
        return {self.eot_token_id} if self.eot_token_id is not None else self._engine().eos

    def _sampling_params(self, kwargs: dict, max_new: int, until: list[str]) -> SamplingParams:
        """A request's settings: greedy unless the task samples; its stop strings are matched on the text with
        special tokens (an EOS text among them stops there), and EOS is the tokenizer's end-of-text token."""
        sampling = {}
        if kwargs.get("do_sample", False):
            sampling = {k: kwargs[k] for k in ("temperature", "top_p", "top_k") if kwargs.get(k) is not None}
        else:
            sampling["temperature"] = 0.0
        ends = dict(ignore_eos=True, stop_token_ids=[self.eot_token_id]) if self.eot_token_id is not None else {}
        return SamplingParams(max_tokens=max_new, stop=[s for s in until if s] or None, skip_special_tokens=False,
                              **ends, **sampling)

    def _engine(self) -> Engine:
        """The engine behind generate_until, made on first use: `batch_size` requests decode together."""
        if self._llm is None:
            limit = min(self.max_length, self.model.config.max_position_embeddings)
            self._llm = LLM(self.model, self.tokenizer, max_num_seqs=self.batch_size, max_model_len=limit)
        return self._llm.engine

    def _run_engine(self, prompts: list[list[int]], params: list[SamplingParams], disable_tqdm: bool
                    ) -> list[CompletionOutput]:
        """All prompts submitted at once (longest first, so that prompts prefilled together are alike in length),
        stepped until every one has finished; outputs in the order of `prompts`."""
        engine = self._engine()
        bar = tqdm(total=len(prompts), disable=disable_tqdm, desc="generate_until")

        def on_update(req) -> None:
            if req.finished:
                bar.update(1)

        submitted = {}
        try:
            for n in sorted(range(len(prompts)), key=lambda n: -len(prompts[n])):
                submitted[n] = engine.add_request(prompts[n], params[n], on_update=on_update)
        except BaseException:  # nothing is left behind in the engine for the next call
            engine.cancel(submitted.values())
            bar.close()
            raise
        try:
            engine.run(list(submitted.values()))
        finally:
            bar.close()
        return [submitted[n].output().outputs[0] for n in range(len(prompts))]


def _positive_int(value, name: str, default: int) -> int:
    if value is None or value == "auto":
        return default
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return n


# ---- running tasks -------------------------------------------------------------------------------------------

def task_manager(data_dir: str | None):
    """lm-eval's TaskManager over the shipped task folder only (fast, and no built-in task that would download)."""
    return TaskManager(include_path=TASKS_DIR, include_defaults=False,
                       metadata={"data_dir": resolve_data_dir(data_dir)})


def task_catalog() -> dict[str, list[str]]:
    """The shipped names by kind: "tasks" (MMLU subjects included), "groups" (mmlu and its four categories) and
    "tags" (names standing for several tasks, e.g. ai2_arc)."""
    buckets = {Kind.TASK: "tasks", Kind.PY_TASK: "tasks", Kind.GROUP: "groups", Kind.TAG: "tags"}
    catalog: dict[str, list[str]] = {"tasks": [], "groups": [], "tags": []}
    for name, entry in TaskIndex.build([Path(TASKS_DIR)]).items():
        if entry.kind in buckets:
            catalog[buckets[entry.kind]].append(name)
    return {k: sorted(v) for k, v in catalog.items()}


def available_tasks() -> list[str]:
    """Every name `evaluate` accepts."""
    return sorted(n for names in task_catalog().values() for n in names)


def evaluate(model: str | HymbaLM, tasks: list[str], data_dir: str | None = None, *, limit: int | float | None = None,
             num_fewshot: int | None = None, batch_size: int = 8, device: str = "auto", dtype: str = "auto",
             max_length: int | None = None, bootstrap_iters: int = 1000, seed: int = 0,
             log_samples: bool = False, apply_chat_template: bool = False) -> dict:
    """Run lm-eval `tasks` (names from `available_tasks()`) on a checkpoint directory or a HymbaLM.

    Returns lm-eval's results dictionary (results, groups, configs, n-samples, ...). `limit` caps the items per
    task (a fraction if < 1). `bootstrap_iters` is for the standard errors of non-mean metrics (perplexity).
    `apply_chat_template` wraps each prompt (few-shot examples as earlier turns) in the tokenizer's chat template."""
    known = set(available_tasks())
    unknown = [t for t in tasks if t not in known]
    if unknown:
        plain = sorted(t for t in known if not t.startswith("mmlu_"))
        raise ValueError(f"unknown task(s) {unknown}; available: {', '.join(plain)}, the MMLU categories "
                         "mmlu_stem, mmlu_humanities, mmlu_social_sciences, mmlu_other and subjects mmlu_<subject> "
                         "(hymba eval --list-tasks)")
    if not tasks:
        raise ValueError("no tasks given")
    manager = task_manager(data_dir)
    lm = model if isinstance(model, HymbaLM) else HymbaLM(pretrained=model, batch_size=batch_size, device=device,
                                                          dtype=dtype, max_length=max_length)
    results = simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                              task_manager=manager, bootstrap_iters=bootstrap_iters, log_samples=log_samples,
                              random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed, apply_chat_template=apply_chat_template,
                              fewshot_as_multiturn=apply_chat_template)
    results.setdefault("config", {}).update(lm.get_model_info())
    results["config"]["data_dir"] = os.path.abspath(data_dir) if data_dir else os.environ.get("HYMBA_EVAL_DATA")
    return results
