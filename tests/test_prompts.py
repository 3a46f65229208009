"""Prompt token ids (docs/method.md#prompt-layout): layout of demonstrations, prefix, queries, candidates and
FT sequences; greedy fitting into the context window; the format record; refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from jaxicl.data import (
    TASKS,
    PromptSet,
    Task,
    build_prompts,
    build_prompts_from_rows,
    get_task,
    load_split,
    select_demos,
    select_eval,
)
from jaxicl.errors import DataError

REPO = Path(__file__).resolve().parent.parent
TOY = Task(name="toy", template="S: {t} L:", label_words=("no", "yes"), eval_split="test")


@dataclasses.dataclass(frozen=True)
class CharTokenizer:
    """One token per character (id = ord + 10), so lengths are easy to reason about."""

    bos_id: int | None = 1
    eos_id: int | None = 2
    add_bos: bool = True
    drop: str = ""  # characters that produce no token
    fold_case: bool = False

    def encode(self, text: str) -> list[int]:
        text = text.lower() if self.fold_case else text
        return [ord(c) + 10 for c in text if c not in self.drop]


CHARS = CharTokenizer()


def enc(text: str) -> tuple[int, ...]:
    return tuple(CHARS.encode(text))


def toy_rows(n: int, offset: int = 0) -> list[dict]:
    """Rows of varied length (5..16 characters of text)."""
    return [{"t": f"r{i + offset}" + "x" * ((i * 7) % 12), "label": (i * 5 + offset) % 2} for i in range(n)]


DEMO_ROWS, EVAL_ROWS = toy_rows(60), toy_rows(40, offset=100)


def toy(tokenizer: CharTokenizer = CHARS, **kw) -> PromptSet:
    args = {"seed": 3, "perm": 0, "k": 8, "max_len": 10_000, "separator": "\n"} | kw
    return build_prompts_from_rows(TOY, tokenizer, DEMO_ROWS, EVAL_ROWS, **args)


def text(row: dict) -> str:
    return f"S: {row['t']} L:"


# --- layout ----------------------------------------------------------------------------------


def test_demonstrations_prefix_queries_candidates_and_ft_sequences():
    ps = toy()
    words = (" no", " yes")
    assert ps.k_icl == 8 and ps.demo_indices == ps.selected_indices == tuple(select_demos(60, 3, 8))
    for j, i in enumerate(ps.demo_indices):
        row = DEMO_ROWS[i]
        assert ps.demo_labels[j] == row["label"]
        assert ps.demo_ids[j] == enc(text(row)) + enc(words[row["label"]]) + enc("\n")
        assert ps.ft_sequences[j] == (1,) + enc(text(row)) + enc(words[row["label"]])
        assert ps.ft_label_starts[j] == 1 + len(text(row))
    assert ps.prefix_ids == (1,) + tuple(t for d in ps.demo_ids for t in d)
    assert ps.zs_prefix_ids == (1,)
    assert ps.candidate_ids == (enc(" no"), enc(" yes"))  # multi-token answers are kept whole
    assert ps.eval_indices == tuple(select_eval(40)) and ps.n_eval == 40
    for q, i, gold in zip(ps.query_ids, ps.eval_indices, ps.gold_labels):
        assert q == enc(text(EVAL_ROWS[i])) and gold == EVAL_ROWS[i]["label"]
    assert ps.icl_sequence(0, 1) == [*ps.prefix_ids, *ps.query_ids[0], *enc(" yes")]
    assert ps.zs_sequence(2) == [1, *ps.query_ids[2]]


def test_eos_separator_and_no_bos():
    ps = toy(separator="<eos>", tokenizer=CharTokenizer(add_bos=False))
    assert all(d[-1] == 2 and d[:-1].count(2) == 0 for d in ps.demo_ids)
    assert ps.prefix_ids == tuple(t for d in ps.demo_ids for t in d)  # no BOS
    assert ps.zs_prefix_ids == () and ps.ft_sequences[0][0] != 1
    assert ps.format.separator_ids == (2,) and ps.format.bos_id == 1 and not ps.format.add_bos
    with pytest.raises(DataError, match="EOS"):
        toy(separator="<eos>", tokenizer=CharTokenizer(eos_id=None))


def test_custom_and_empty_separator():
    assert toy(separator=" || ").demo_ids[0][-4:] == enc(" || ")
    ps = toy(separator="")
    assert ps.demo_ids[0] == enc(text(DEMO_ROWS[ps.demo_indices[0]])) + ps.candidate_ids[ps.demo_labels[0]]


# --- fitting into the context window ---------------------------------------------------------


@pytest.mark.parametrize("max_len", [60, 77, 100, 150, 222, 300])
def test_greedy_fit_never_exceeds_the_window(max_len):
    ps = toy(k=32, max_len=max_len)
    full = toy(k=32)
    longest_query = max(len(enc(text(EVAL_ROWS[i]))) for i in select_eval(40))
    assert ps.query_reserve == longest_query + 4  # " yes" is the longest answer
    assert 1 <= ps.k_icl < 32
    assert ps.demo_ids == full.demo_ids[: ps.k_icl]  # a prefix of the drawn order
    assert len(ps.prefix_ids) + ps.query_reserve <= max_len
    assert len(ps.prefix_ids) + len(full.demo_ids[ps.k_icl]) + ps.query_reserve > max_len
    for i in range(ps.n_eval):
        for c in range(ps.n_classes):
            assert len(ps.icl_sequence(i, c)) <= max_len
    assert len(ps.ft_sequences) == ps.k_icl  # FT trains on exactly what ICL saw


def test_all_demos_fit_in_a_large_window():
    ps = toy(k=32)
    assert ps.k_icl == 32 and len(ps.demo_indices) == 32


def test_window_too_small_is_refused():
    reserve = toy().query_reserve
    with pytest.raises(DataError, match="context window too small.*one demonstration"):
        toy(max_len=1 + reserve + 3)
    with pytest.raises(DataError, match="context window too small.*zero-shot"):
        toy(max_len=reserve)
    with pytest.raises(DataError, match="max_len"):
        toy(max_len=0)


def test_zero_shot_only_run():
    ps = toy(k=0, max_len=toy().query_reserve + 1)
    assert ps.k_icl == 0 and ps.prefix_ids == (1,) and ps.ft_sequences == () and ps.demo_indices == ()


def test_boundary_demo_that_fills_the_window_exactly_is_taken():
    full = toy(k=32)
    for n in (1, 3, 7):
        exact = 1 + sum(len(d) for d in full.demo_ids[:n]) + full.query_reserve
        assert toy(k=32, max_len=exact).k_icl == n
        if n > 1:
            assert toy(k=32, max_len=exact - 1).k_icl == n - 1


def test_reserve_is_over_the_eval_pool_so_k_icl_ignores_n_eval():
    rows = [dict(r) for r in EVAL_ROWS]
    rows[select_eval(40)[-1]]["t"] = "long " * 20  # the longest query is the last of the pool
    a = build_prompts_from_rows(TOY, CHARS, DEMO_ROWS, rows, seed=3, k=32, max_len=200)
    b = build_prompts_from_rows(TOY, CHARS, DEMO_ROWS, rows, seed=3, k=32, max_len=200, n_eval=5)
    assert a.query_reserve == len(text(rows[select_eval(40)[-1]])) + 4
    assert b.n_eval == 5 and b.eval_indices == a.eval_indices[:5] and b.query_ids == a.query_ids[:5]
    assert (b.k_icl, b.prefix_ids, b.query_reserve) == (a.k_icl, a.prefix_ids, a.query_reserve)


# --- seeds and permutations ------------------------------------------------------------------


def test_same_seed_same_prompts_different_seed_different_demos():
    assert toy(seed=5) == toy(seed=5)
    assert set(toy(seed=5).demo_indices) != set(toy(seed=6).demo_indices)
    assert toy(seed=5).eval_indices == toy(seed=6).eval_indices  # the eval set is fixed (seed 1)


def test_perm_reorders_demonstrations_and_ft_follows_icl_order():
    p0, p2 = toy(k=32, perm=0), toy(k=32, perm=2)
    assert sorted(p0.demo_indices) == sorted(p2.demo_indices) and p0.demo_indices != p2.demo_indices
    for j, i in enumerate(p2.demo_indices):
        assert p2.ft_sequences[j] == (1,) + enc(text(DEMO_ROWS[i])) + p2.candidate_ids[DEMO_ROWS[i]["label"]]


# --- refusals --------------------------------------------------------------------------------


def test_label_word_that_tokenizes_to_nothing():
    with pytest.raises(DataError, match="label word 'yes' tokenizes to no tokens"):
        toy(tokenizer=CharTokenizer(drop=" yes"))


def test_label_words_with_identical_ids():
    task = Task(name="case", template="S: {t} L:", label_words=("Yes", "yes"))
    with pytest.raises(DataError, match="same ids"):
        build_prompts_from_rows(task, CharTokenizer(fold_case=True), DEMO_ROWS, EVAL_ROWS, seed=1, max_len=999)


def test_rows_given_directly_are_checked():
    bad = [dict(r) for r in EVAL_ROWS]
    bad[select_eval(40)[3]]["label"] = 7
    with pytest.raises(DataError, match="label value 7 out of range"):
        build_prompts_from_rows(TOY, CHARS, DEMO_ROWS, bad, seed=3, max_len=999)


# --- the format record -----------------------------------------------------------------------


def test_format_record_is_json_and_rebuilds_every_prompt():
    ps = toy(k=32, max_len=200, separator="<eos>")
    rec = json.loads(json.dumps(ps.format.to_dict()))
    assert rec["template"] == TOY.template and rec["label_words"] == ["no", "yes"]
    assert rec["separator"] == "<eos>" and rec["bos_id"] == 1 and rec["max_len"] == 200

    def fill(row: dict) -> str:
        out = rec["template"]
        for field in rec["input_fields"]:
            out = out.replace("{" + field + "}", row[field])
        return out

    bos = [rec["bos_id"]] if rec["add_bos"] else []
    answers = [CHARS.encode(rec["answer_prefix"] + w) for w in rec["label_words"]]
    prefix = list(bos)
    for i in ps.demo_indices:
        row = DEMO_ROWS[i]
        prefix += CHARS.encode(fill(row)) + answers[row[rec["label_field"]]] + rec["separator_ids"]
    assert tuple(prefix) == ps.prefix_ids
    assert [tuple(a) for a in answers] == list(ps.candidate_ids)
    assert [tuple(CHARS.encode(fill(EVAL_ROWS[i]))) for i in ps.eval_indices] == list(ps.query_ids)


# --- real data -------------------------------------------------------------------------------


def test_paper_task_end_to_end_with_a_small_window(data_dir):
    task = TASKS["agnews"]
    ps = build_prompts(task, CHARS, seed=3, perm=1, k=32, n_eval=50, max_len=4096, data_dir=data_dir)
    test_rows = load_split(task, "test", data_dir)
    assert 1 <= ps.k_icl < 32 and ps.n_eval == 50
    assert ps.gold_labels == tuple(test_rows[i]["label"] for i in ps.eval_indices)
    assert max(len(ps.icl_sequence(i, c)) for i in range(50) for c in range(4)) <= 4096
    assert ps.selected_indices == tuple(select_demos(8000, 3, 32, perm=1))


def test_trec_spec_end_to_end(data_dir):
    task = get_task(str(REPO / "experiments" / "tasks" / "trec.json"))
    ps = build_prompts(task, CHARS, seed=1, k=32, max_len=4096, data_dir=data_dir)
    train = load_split(task, "train", data_dir)
    test = load_split(task, "test", data_dir)
    assert ps.task == "trec" and ps.n_eval == 500 and ps.k_icl == 32 and ps.n_classes == 6
    assert ps.eval_indices == tuple(select_eval(500))
    first = train[ps.demo_indices[0]]
    assert ps.demo_ids[0] == enc(f"Question: {first['text']} Type:") + enc(
        " " + task.label_words[first["coarse_label"]]
    ) + enc("\n")
    assert ps.gold_labels == tuple(test[i]["coarse_label"] for i in ps.eval_indices)


def test_real_hf_tokenizer_piece_by_piece(data_dir):
    """A byte-level BPE (GPT-2 style) trained on the spot, through jaxicl's Tokenizer wrapper."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from jaxicl.io.tokenizer import Tokenizer

    task = TASKS["sst2"]
    train = load_split(task, "train", data_dir)
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator((r["sentence"] for r in train[:3000]), trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    tok = Tokenizer(backend=fast, bos_id=0, eos_id=1, add_bos=True)

    ps = build_prompts(task, tok, seed=2, k=32, n_eval=20, max_len=2048, separator="<eos>", data_dir=data_dir)
    assert ps.prefix_ids[0] == 0 and ps.prefix_ids.count(1) == ps.k_icl
    assert any(len(c) > 1 for c in ps.candidate_ids)  # small vocab: multi-token label words
    first = train[ps.demo_indices[0]]
    pieces = tok.encode(task.input_text(first)) + tok.encode(" " + task.label_words[first["label"]]) + [1]
    assert list(ps.demo_ids[0]) == pieces
    valid = load_split(task, "validation", data_dir)
    q = valid[ps.eval_indices[0]]
    assert tok.decode(ps.zs_sequence(0, 1)[1:]) == task.input_text(q) + " Positive"
