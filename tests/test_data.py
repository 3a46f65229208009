"""Tasks, loading, and the paper's selection (docs/method.md#tasks-and-prompts): sizes, HF shuffle semantics, the
permutation protocol, user tasks from JSON specs, and every refusal of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxicl.data import (
    TASKS,
    demo_permutation,
    fill_template,
    get_task,
    hf_shuffle_indices,
    load_split,
    select_demos,
    select_eval,
    task_from_spec,
)
from jaxicl.data import tasks as T
from jaxicl.errors import DataError

REPO = Path(__file__).resolve().parent.parent
TREC_SPEC = REPO / "experiments" / "tasks" / "trec.json"


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- the six tasks ---------------------------------------------------------------------------


def test_paper_tasks_are_registered_as_in_the_spec():
    assert set(TASKS) == {"sst2", "sst5", "mr", "subj", "agnews", "cb"}
    sst2, cb, agnews = TASKS["sst2"], TASKS["cb"], TASKS["agnews"]
    assert sst2.template == "Sentence: {sentence} Label:" and sst2.label_words == ("Negative", "Positive")
    assert (sst2.hf_path, sst2.hf_config, sst2.eval_split) == ("glue", "sst2", "validation")
    assert cb.input_fields == ("premise", "hypothesis") and cb.label_words == ("True", "False", "Neither")
    assert agnews.template.endswith("Article: {text} Answer:") and agnews.n_classes == 4
    assert TASKS["subj"].eval_split == "test" and agnews.eval_split == "test"
    assert TASKS["sst5"].label_words == ("terrible", "bad", "neutral", "good", "great")
    assert TASKS["mr"].template == "Review: {text} Sentiment:"
    runs_lr = {name: (t.runs, t.lr) for name, t in TASKS.items()}
    assert runs_lr == {
        "sst2": (((2, 0), (3, 1), (4, 2)), 0.0005),
        "sst5": (((5, 0), (6, 1), (7, 2)), 0.00016),
        "mr": (((5, 0), (6, 1), (7, 2)), 0.003),
        "subj": (((4, 0), (5, 1), (6, 2)), 0.003),
        "agnews": (((3, 0), (4, 1), (5, 2)), 0.2),
        "cb": (((3, 0), (4, 1), (5, 2)), 0.08),
    }


@pytest.mark.parametrize(
    "name, split, size",
    [
        ("sst2", "validation", 872),
        ("sst5", "validation", 1101),
        ("sst5", "train", 8544),
        ("mr", "validation", 1066),
        ("mr", "train", 8530),
        ("subj", "test", 2000),
        ("subj", "train", 8000),
        ("agnews", "test", 7600),
        ("agnews", "train", 8000),
        ("cb", "validation", 56),
        ("cb", "train", 250),
    ],
)
def test_splits_load_with_their_sizes(data_dir, name, split, size):
    rows = load_split(get_task(name), split, data_dir)
    assert len(rows) == size
    assert all(0 <= r[TASKS[name].label_field] < TASKS[name].n_classes for r in rows)


def test_rows_keep_file_order(data_dir):
    rows = load_split(TASKS["cb"], "validation", data_dir)
    with open(data_dir / "cb" / "validation.jsonl") as f:
        assert rows == [json.loads(line) for line in f]


def test_env_var_is_used_and_explicit_dir_wins(tmp_path, monkeypatch, data_dir):
    fake = tmp_path / "fake"
    _write_jsonl(fake / "cb" / "validation.jsonl", [{"premise": "p", "hypothesis": "h", "label": 2}])
    monkeypatch.setenv("JAXICL_DATA_DIR", str(data_dir))
    assert len(load_split(TASKS["cb"], "validation")) == 56
    assert len(load_split(TASKS["cb"], "validation", data_dir=fake)) == 1
    monkeypatch.setenv("JAXICL_DATA_DIR", str(fake))
    assert len(load_split(TASKS["cb"], "validation")) == 1


def test_hub_is_the_fallback_and_its_failure_says_pass_data_dir(monkeypatch):
    import datasets

    calls = []

    def offline(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        raise ConnectionError("no network")

    monkeypatch.delenv("JAXICL_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="--data-dir") as e:
        load_split(TASKS["sst2"], "validation")
    assert "hf:glue/sst2" in str(e.value) and "no network" in str(e.value)
    assert calls == [("glue", "sst2", "validation")]


def test_hub_rows_are_checked_like_local_rows(monkeypatch):
    import datasets

    monkeypatch.delenv("JAXICL_DATA_DIR", raising=False)
    rows = [{"sentence": "fine ", "label": 1, "idx": 0}, {"sentence": "bad ", "label": -1, "idx": 1}]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(rows))
    with pytest.raises(DataError, match=r"hf:glue/sst2 split 'test' row 1: label value -1 out of range"):
        load_split(TASKS["sst2"], "test")


# --- bad input -------------------------------------------------------------------------------


def test_missing_split_file_names_the_path(data_dir):
    with pytest.raises(DataError, match="missing split file") as e:
        load_split(TASKS["sst2"], "test", data_dir)
    assert str(data_dir / "sst2" / "test.jsonl") in str(e.value)
    assert "train.jsonl" in str(e.value)  # says what is there


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "sst2" / "validation.jsonl"
    path.parent.mkdir()
    path.write_text('{"sentence": "a", "label": 0}\n\n{"sentence": "b", "label": 1\n')
    with pytest.raises(DataError, match=r"validation\.jsonl line 3: malformed JSON"):
        load_split(TASKS["sst2"], "validation", tmp_path)


def test_non_object_line_is_refused(tmp_path):
    _write_jsonl(tmp_path / "sst2" / "validation.jsonl", [{"sentence": "a", "label": 0}])
    with open(tmp_path / "sst2" / "validation.jsonl", "a") as f:
        f.write("[1, 2]\n")
    with pytest.raises(DataError, match="line 2: expected a JSON object"):
        load_split(TASKS["sst2"], "validation", tmp_path)


def test_missing_template_field_names_field_file_and_row(tmp_path):
    rows = [{"premise": "p", "hypothesis": "h", "label": 0}, {"premise": "p", "label": 1}]
    path = _write_jsonl(tmp_path / "cb" / "validation.jsonl", rows)
    with pytest.raises(DataError, match=r"field 'hypothesis'") as e:
        load_split(TASKS["cb"], "validation", tmp_path)
    assert f"{path} line 2 (row 1)" in str(e.value)


@pytest.mark.parametrize(
    "label, pattern",
    [(2, "label value 2 out of range 0..1"), (-1, "out of range"), ("1", "integer class id"), (True, "integer")],
)
def test_bad_label_is_refused(tmp_path, label, pattern):
    rows = [{"sentence": "a", "label": 0}, {"sentence": "b", "label": label}]
    _write_jsonl(tmp_path / "sst2" / "validation.jsonl", rows)
    with pytest.raises(DataError, match=pattern):
        load_split(TASKS["sst2"], "validation", tmp_path)


def test_missing_label_field_and_non_string_text_are_refused(tmp_path):
    _write_jsonl(tmp_path / "sst2" / "validation.jsonl", [{"sentence": "a"}])
    with pytest.raises(DataError, match="label field 'label' is missing"):
        load_split(TASKS["sst2"], "validation", tmp_path)
    _write_jsonl(tmp_path / "sst2" / "validation.jsonl", [{"sentence": None, "label": 0}])
    with pytest.raises(DataError, match="field 'sentence' must be a string"):
        load_split(TASKS["sst2"], "validation", tmp_path)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(DataError, match="unknown task 'sst3'") as e:
        get_task("sst3")
    for name in TASKS:
        assert name in str(e.value)


# --- selection: HF semantics, seeds, permutations --------------------------------------------


@pytest.mark.parametrize("n, seed", [(10, 0), (250, 3), (1000, 1), (7600, 1), (8544, 5)])
def test_shuffle_equals_hf_datasets(n, seed):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"i": i} for i in range(n)])
    assert ds.shuffle(seed=seed)["i"] == hf_shuffle_indices(n, seed).tolist()


def test_demo_and_eval_selection_equal_hf_on_real_rows(data_dir):
    datasets = pytest.importorskip("datasets")
    task = TASKS["cb"]
    train = load_split(task, "train", data_dir)
    valid = load_split(task, "validation", data_dir)
    hf_demos = datasets.Dataset.from_list(train).shuffle(seed=3).select(range(32)).to_list()
    assert [train[i] for i in select_demos(len(train), seed=3, k=32)] == hf_demos
    hf_eval = datasets.Dataset.from_list(valid).shuffle(seed=1).to_list()
    assert [valid[i] for i in select_eval(len(valid))] == hf_eval


def test_eval_pool_is_first_2000_of_seed_1_then_n_eval():
    pool = select_eval(7600)
    assert len(pool) == 2000 and pool == hf_shuffle_indices(7600, 1)[:2000].tolist()
    assert select_eval(7600, n_eval=200) == pool[:200]
    assert select_eval(56, n_eval=200) == hf_shuffle_indices(56, 1).tolist()
    with pytest.raises(DataError, match="n_eval"):
        select_eval(56, n_eval=0)


def test_same_seed_same_demos_different_seed_different_demos():
    a, b, c = select_demos(8544, 5, 32), select_demos(8544, 5, 32), select_demos(8544, 6, 32)
    assert a == b and len(a) == 32 and len(set(a)) == 32
    assert set(a) != set(c)
    assert select_demos(250, 3, 8) == select_demos(250, 3, 32)[:8]  # first k of the same shuffle
    assert len(select_demos(20, 3, 32)) == 20  # k capped at the split size


def test_perm_protocol_is_the_authors_global_numpy_draws():
    # The authors: np.random.seed(seed); five np.random.permutation(k); take list index perm.
    saved = np.random.get_state()
    try:
        for seed, perm in [(3, 1), (4, 2), (7, 4)]:
            np.random.seed(seed)
            draws = [np.random.permutation(32) for _ in range(5)]
            np.random.seed(12345)
            marker = np.random.get_state()[1].copy()
            assert demo_permutation(32, seed, perm).tolist() == draws[perm].tolist()
            assert np.array_equal(np.random.get_state()[1], marker)  # global RNG untouched
    finally:
        np.random.set_state(saved)


def test_perm_zero_is_identity_and_perms_reorder_the_same_set():
    base = select_demos(67349, 3, 32, perm=0)
    assert base == hf_shuffle_indices(67349, 3)[:32].tolist()
    p1, p2 = select_demos(67349, 3, 32, perm=1), select_demos(67349, 3, 32, perm=2)
    assert sorted(p1) == sorted(base) == sorted(p2)
    assert p1 != base and p2 != base and p1 != p2
    order = demo_permutation(32, 3, 1)
    assert p1 == [base[j] for j in order]
    for bad in (-1, 5):
        with pytest.raises(DataError, match="perm"):
            select_demos(100, 3, 32, perm=bad)


def test_bad_selection_arguments_are_refused():
    for kwargs, pattern in [({"seed": -1}, "seed"), ({"k": -2}, "k must"), ({"perm": 1.0}, "perm")]:
        with pytest.raises(DataError, match=pattern):
            select_demos(100, **({"seed": 3, "k": 32} | kwargs))


# --- templates and user tasks ----------------------------------------------------------------


def test_fill_template_substitutes_once():
    assert fill_template("{a} and {b}!", {"a": "x {b}", "b": "y"}) == "x {b} and y!"
    assert TASKS["cb"].input_text({"premise": "P.", "hypothesis": "H", "label": 0}) == (
        "P. Question: H. True, False, or Neither? Answer:"
    )


def test_trec_spec_loads_and_reads_its_split(data_dir):
    task = get_task(str(TREC_SPEC))
    assert task.name == "trec" and task.label_field == "coarse_label" and task.n_classes == 6
    assert (task.demo_split, task.eval_split, task.hf_path) == ("train", "test", "CogComp/trec")
    assert get_task(TREC_SPEC) == task  # a Path works too
    test = load_split(task, "test", data_dir)
    train = load_split(task, "train", data_dir)
    assert (len(train), len(test)) == (5452, 500)
    assert task.input_text(test[0]).startswith("Question: ") and task.input_text(test[0]).endswith(" Type:")


def test_spec_defaults_and_relative_data_files(tmp_path):
    _write_jsonl(tmp_path / "files" / "tr.jsonl", [{"q": "a", "y": 1}, {"q": "b", "y": 0}])
    spec = {"name": "mine", "template": "Q: {q} A:", "label_words": ["no", "yes"], "label_field": "y",
            "data_files": {"train": "files/tr.jsonl", "validation": "files/tr.jsonl"}}  # fmt: skip
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(spec))
    task = get_task(str(path))
    assert task.runs == T.DEFAULT_RUNS and task.lr is None and task.input_fields == ("q",)
    assert [r["q"] for r in load_split(task, "train", data_dir=tmp_path / "elsewhere")] == ["a", "b"]
    with pytest.raises(DataError, match="no data file for split 'test'"):
        load_split(task, "test")


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"label_word": ["a"]}, "unknown key"),
        ({"template": None}, "'template' must be a non-empty string"),
        ({"template": "no fields"}, "no {field} placeholder"),
        ({"label_words": ["same", "same"]}, "distinct"),
        ({"label_words": ["only"]}, "at least 2"),
        ({"label_words": ["a", ""]}, "non-empty strings"),
        ({"runs": [[1, 7]]}, "perm"),
        ({"runs": [1, 2]}, "runs"),
        ({"lr": -1}, "lr"),
        ({"input_fields": ["other"]}, "do not match"),
    ],
)
def test_bad_specs_are_refused(change, pattern):
    spec = {"name": "x", "template": "In: {text}", "label_words": ["a", "b"], **change}
    with pytest.raises(DataError, match=pattern):
        task_from_spec(spec)


def test_task_normalises_sequences_and_refuses_a_single_string():
    task = T.Task(name="t", template="{x}", label_words=["a", "b"], runs=[[1, 0]], data_files={"train": "f"})
    assert task.label_words == ("a", "b") and task.runs == ((1, 0),) and task.data_files == (("train", "f"),)
    assert hash(task) == hash(T.Task(name="t", template="{x}", label_words=("a", "b"), runs=((1, 0),),
                                     data_files=(("train", "f"),)))  # fmt: skip
    with pytest.raises(DataError, match="not one string"):
        T.Task(name="t", template="{x}", label_words="ab")


def test_spec_file_errors(tmp_path):
    with pytest.raises(DataError, match="cannot read task spec"):
        get_task(str(tmp_path / "absent.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x",\n "template": }')
    with pytest.raises(DataError, match="invalid JSON at line 2"):
        get_task(str(bad))
    missing = tmp_path / "missing.json"
    missing.write_text('{"name": "x"}')
    with pytest.raises(DataError, match=r"missing required key\(s\) \['label_words', 'template'\]"):
        get_task(str(missing))
