"""The shipped task definitions against lm-evaluation-harness's own: prompts, continuations and gold answers.

Two kinds of reference: items written out by hand from the data files and lm-eval's documented formats (MMLU,
ARC, HellaSwag, WinoGrande, COPA), and lm-eval's built-in task YAMLs (the installed package) run on the same
documents, so that every template, delimiter and target rule is lm-eval's, not a look-alike.
"""

import json
import logging
from pathlib import Path

import lm_eval  # noqa: E402
import pytest
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.tasks._yaml_loader import load_yaml  # noqa: E402

from hymba.evaluation import lm_eval_adapter  # noqa: F401  (offline switches before lm_eval loads)
from hymba.evaluation.task_data import TaskDataError, convert_file, local_dataset

LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"
logging.getLogger("lm_eval").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def manager(eval_data_dir):
    return lm_eval_adapter.task_manager(eval_data_dir)


def build(task, limit, num_fewshot=0):
    task.set_config(key="num_fewshot", value=num_fewshot)
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(limit=limit)
    by_doc: dict[int, list] = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst.args)
    return [by_doc[i] for i in sorted(by_doc)], [gold_index(task, d) for d in list(task.eval_docs)[:limit]]


def gold_index(task, doc):
    """The answer as lm-eval scores it: doc_to_text for partial-scoring tasks (WinoGrande), else doc_to_target, a
    string target being looked up among the choices."""
    if task.OUTPUT_TYPE != "multiple_choice":
        return task.doc_to_target(doc)
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str) and not gold.isdigit():
        return task.doc_to_choice(doc).index(gold)
    return int(gold)


def ours(manager, name, limit, num_fewshot=0):
    return build(manager.load([name])["tasks"][name], limit, num_fewshot)


def reference(yaml_path, docs, limit, num_fewshot=0, fewshot_docs=None):
    """lm-eval's own task (YAML from the installed package) over `docs` given in its upstream schema."""
    import datasets

    spec = load_yaml(LM_EVAL_TASKS / yaml_path, resolve_func=True)
    for key in ("tag", "group"):
        spec.pop(key, None)
    splits = {k: docs for k in ("train", "validation", "test")}
    if fewshot_docs is not None:
        splits[spec.get("fewshot_split") or "dev"] = fewshot_docs
    name = "reference_" + spec["task"]
    spec.update(task=name, custom_dataset=lambda **_: datasets.DatasetDict(
        {k: datasets.Dataset.from_list(v) for k, v in splits.items()}))
    task = TaskManager(include_defaults=False).load([spec])["tasks"][name]
    return build(task, limit, num_fewshot)


# ---- by hand -------------------------------------------------------------------------------------------------

def test_mmlu_item_by_hand(manager):
    """lm-eval's MMLU: subject description, "question\\nA. ..\\nD. ..\\nAnswer:", the letters after a space."""
    (requests,), (gold,) = ours(manager, "mmlu_abstract_algebra", limit=1)
    prompt = ("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
              "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
              "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")
    assert requests == [(prompt, " A"), (prompt, " B"), (prompt, " C"), (prompt, " D")]
    assert gold == 1  # "4", letter B (the README's spot check)


def test_mmlu_five_shot_uses_the_subjects_dev_items_in_order(manager, eval_data_dir):
    (requests,), _ = ours(manager, "mmlu_anatomy", limit=1, num_fewshot=5)
    dev = [json.loads(line) for line in open(Path(eval_data_dir) / "mmlu_dev.jsonl")]
    dev = [d for d in dev if d["subject"] == "anatomy"]
    shots = "".join(f"{d['question'].strip()}\nA. {d['choices'][0]}\nB. {d['choices'][1]}\nC. {d['choices'][2]}\n"
                    f"D. {d['choices'][3]}\nAnswer: {'ABCD'[d['answer']]}\n\n" for d in dev)
    context = requests[0][0]
    assert context.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n" + shots)
    assert context.endswith("\nAnswer:") and context.count("Answer:") == 6


def test_arc_item_by_hand(manager):
    (requests,), (gold,) = ours(manager, "arc_easy", limit=1)
    prompt = "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"
    assert requests == [(prompt, " Sunlight is the source of energy for nearly all ecosystems."),
                        (prompt, " Most ecosystems are found on land instead of in water."),
                        (prompt, " Carbon dioxide is more available than other gases."),
                        (prompt, " The producers in all ecosystems are plants.")]
    assert gold == 0


def test_hellaswag_winogrande_copa_items_match_lm_eval_on_their_upstream_documents(manager):
    """The upstream form of each first item, written by hand, through lm-eval's own YAML; and ours from the file."""
    hella = {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
             "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                         "is holding a rubik's cube.", "starts pulling up roofing on a roof."], "label": "3"}
    wino = {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
            "option1": "Sarah", "option2": "Maria", "answer": "2"}
    copa = {"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.",
            "choice2": "Water flowed from the spout.", "question": "effect", "label": 1}
    for name, yaml_path, doc in (("hellaswag", "hellaswag/hellaswag.yaml", hella),
                                 ("winogrande", "winogrande/default.yaml", wino),
                                 ("copa", "super_glue/copa/default.yaml", copa)):
        mine, mine_gold = ours(manager, name, limit=1)
        ref, ref_gold = reference(yaml_path, [doc], limit=1)
        assert mine == ref, name
        assert mine_gold == ref_gold, name
    (requests,), _ = ours(manager, "hellaswag", limit=1)
    assert requests[3] == ("Roof shingle removal: A man is sitting on a roof. He", " starts pulling up roofing on a roof.")
    (requests,), _ = ours(manager, "winogrande", limit=1)
    assert [r[0][-5:] for r in requests] == ["Sarah", "Maria"]  # partial scoring: the option is in the context


# ---- against lm-eval's YAMLs, many items ------------------------------------------------------------------------

ROUND_TRIP = [  # our task, lm-eval's YAML, local layout, file
    ("arc_easy", "arc/arc_easy.yaml", "arc", "arc_easy.jsonl"),
    ("arc_challenge", "arc/arc_challenge.yaml", "arc", "arc_challenge.jsonl"),
    ("piqa", "piqa/piqa.yaml", "piqa", "piqa.jsonl"),
    ("openbookqa", "openbookqa/openbookqa.yaml", "openbookqa", "openbook_qa.jsonl"),
    ("boolq", "super_glue/boolq/default.yaml", "boolq", "boolq.jsonl"),
    ("copa", "super_glue/copa/default.yaml", "copa", "copa.jsonl"),
    ("lambada_openai", "lambada/lambada_openai.yaml", "lambada", "lambada_openai.jsonl"),
]


@pytest.mark.parametrize("name,yaml_path,layout,filename", ROUND_TRIP, ids=[r[0] for r in ROUND_TRIP])
def test_requests_equal_lm_evals_own_task_definition(manager, eval_data_dir, name, yaml_path, layout, filename):
    limit = 25
    docs = convert_file(layout, str(Path(eval_data_dir) / filename))[:limit]
    assert ours(manager, name, limit) == reference(yaml_path, docs, limit)


def test_mmlu_requests_equal_lm_evals_own_definition_five_shot(manager, eval_data_dir):
    test = convert_file("mmlu", str(Path(eval_data_dir) / "mmlu_test.jsonl.gz"), subject="astronomy")[:10]
    dev = convert_file("mmlu", str(Path(eval_data_dir) / "mmlu_dev.jsonl"), subject="astronomy")
    ref = reference("mmlu/default/mmlu_astronomy.yaml", test, 10, num_fewshot=5, fewshot_docs=dev)
    assert ours(manager, "mmlu_astronomy", 10, num_fewshot=5) == ref


def test_mmlu_groups_cover_every_subject_once(manager, eval_data_dir):
    import gzip

    subjects = {json.loads(line)["subject"] for line in gzip.open(Path(eval_data_dir) / "mmlu_test.jsonl.gz", "rt")}
    loaded = manager.load(["mmlu"])
    assert set(loaded["tasks"]) == {f"mmlu_{s}" for s in subjects} and len(subjects) == 57
    categories = ["mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities"]
    assert sorted(loaded["group_map"]["mmlu"]) == sorted(categories)
    members = [set(loaded["group_map"][c]) for c in categories]
    assert sum(len(m) for m in members) == 57 and set().union(*members) == set(loaded["tasks"])
    assert "mmlu_abstract_algebra" in loaded["group_map"]["mmlu_stem"]
    assert "mmlu_professional_law" in loaded["group_map"]["mmlu_humanities"]


def test_local_files_convert_losslessly(eval_data_dir):
    """Every item of every file converts; counts match the data README."""
    counts = {("arc", "arc_easy.jsonl"): 2376, ("arc", "arc_challenge.jsonl"): 1172, ("piqa", "piqa.jsonl"): 1838,
              ("winogrande", "winogrande.jsonl"): 1267, ("lambada", "lambada_openai.jsonl"): 5153,
              ("boolq", "boolq.jsonl"): 3270, ("openbookqa", "openbook_qa.jsonl"): 500, ("copa", "copa.jsonl"): 100,
              ("siqa_2way", "siqa.jsonl"): 1954, ("hellaswag", "hellaswag_val.jsonl.gz"): 10042,
              ("mmlu", "mmlu_test.jsonl.gz"): 14042, ("mmlu", "mmlu_dev.jsonl"): 285}
    for (layout, filename), n in counts.items():
        assert len(convert_file(layout, str(Path(eval_data_dir) / filename))) == n, filename


def test_bad_data_gives_errors_that_name_the_file_and_item(tmp_path, monkeypatch):
    bad = tmp_path / "arc_easy.jsonl"
    bad.write_text('{"query": "Question: ok", "choices": ["a", "b"], "gold": 1}\n'
                   '{"query": "no prefix", "choices": ["a", "b"], "gold": 0}\n')
    with pytest.raises(TaskDataError, match=r"arc_easy.jsonl, item 2: expected text starting with 'Question: '"):
        convert_file("arc", str(bad))
    bad = tmp_path / "arc_challenge.jsonl"
    bad.write_text('{"query": "Question: q", "choices": ["a", "b"], "gold": 2}\n')
    with pytest.raises(TaskDataError, match=r"item 1: gold=2 is not an index into 2 choices"):
        convert_file("arc", str(bad))
    (tmp_path / "broken.jsonl").write_text('{"query": \n')
    with pytest.raises(TaskDataError, match=r"broken.jsonl, line 1: not valid JSON"):
        convert_file("arc", str(tmp_path / "broken.jsonl"))
    monkeypatch.delenv("HYMBA_EVAL_DATA", raising=False)
    with pytest.raises(TaskDataError, match="pass the folder"):
        local_dataset(data_dir=None, layout="arc", splits={"test": "arc_easy.jsonl"})
    with pytest.raises(TaskDataError, match="piqa.jsonl not found"):
        local_dataset(data_dir=str(tmp_path), layout="piqa", splits={"test": "piqa.jsonl"})
