"""Token ids for the whole protocol of one run: the ICL prefix, the queries, the candidate answers
and the finetuning sequences, from a `Task`, a tokenizer, a seed and a permutation index.

Tokenization is piece by piece, as the authors do (docs/method.md#prompt-layout): the input text, the answer
`" " + label_word` and the separator are encoded separately and concatenated, never as one
string. BPE merges therefore never cross a piece boundary, so a demonstration's label tokens are
the very candidate tokens a query is scored on, and every prompt is the concatenation of pieces
recorded in `PromptSet` (the `format` record says how to rebuild each piece from a row).

Layouts (`B` = [bos_id] when the tokenizer's family uses a BOS, else nothing):
  demonstration  = encode(input) + encode(" " + word) + separator_ids
  ICL prefix     = B + demonstration_1 + ... + demonstration_{k_icl}
  zero-shot      = B
  query          = encode(input)           (a prompt is prefix + query [+ candidate])
  candidate c    = encode(" " + label_words[c])  (may be several tokens)
  FT sequence    = B + encode(input) + encode(" " + word)  (no separator; docs/method.md#gd)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from jaxicl.data.tasks import Task, check_row, load_split, select_demos, select_eval
from jaxicl.errors import DataError

EOS_SEPARATOR = "<eos>"  # separator value meaning "the tokenizer's EOS id" (the paper's choice)
ANSWER_PREFIX = " "  # the authors' output_temp " {answer}"

Ids = tuple[int, ...]


class TokenizerLike(Protocol):
    """What prompt building needs from a tokenizer (jaxicl.io.tokenizer.Tokenizer has it)."""

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int | None: ...

    @property
    def add_bos(self) -> bool: ...

    def encode(self, text: str) -> list[int]: ...


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """Everything, besides the rows and the tokenizer, needed to rebuild every prompt of a run."""

    task: str
    template: str
    input_fields: tuple[str, ...]
    label_field: str
    label_words: tuple[str, ...]
    answer_prefix: str
    separator: str
    separator_ids: Ids
    bos_id: int | None
    add_bos: bool
    eos_id: int | None
    max_len: int
    tokenization: str = "piece-by-piece: encode(input) + encode(answer_prefix + word) + separator_ids"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record (tuples become lists)."""
        out = dataclasses.asdict(self)
        return {key: list(v) if isinstance(v, tuple) else v for key, v in out.items()}


@dataclasses.dataclass(frozen=True)
class PromptSet:
    """The token ids of one (task, seed, perm) run.

    `selected_indices` are the k demonstrations drawn (indices into the demo split, prompt order);
    `demo_indices` the first `k_icl` of them, the ones that fit the context window: ICL sees them
    and FT trains on them, in the same order. `eval_indices` index the eval split.
    """

    task: str
    seed: int
    perm: int
    k: int
    k_icl: int
    selected_indices: tuple[int, ...]
    demo_indices: tuple[int, ...]
    demo_labels: tuple[int, ...]
    demo_ids: tuple[Ids, ...]
    prefix_ids: Ids
    zs_prefix_ids: Ids
    ft_sequences: tuple[Ids, ...]
    ft_label_starts: tuple[int, ...]
    eval_indices: tuple[int, ...]
    gold_labels: tuple[int, ...]
    query_ids: tuple[Ids, ...]
    candidate_ids: tuple[Ids, ...]
    query_reserve: int  # longest pool query + longest candidate: the room kept free in the window
    format: PromptFormat

    @property
    def n_eval(self) -> int:
        return len(self.eval_indices)

    @property
    def n_classes(self) -> int:
        return len(self.candidate_ids)

    def icl_sequence(self, i: int, label: int | None = None) -> list[int]:
        """ICL prompt of eval example i, with candidate `label` appended when given."""
        return self._sequence(self.prefix_ids, i, label)

    def zs_sequence(self, i: int, label: int | None = None) -> list[int]:
        """Zero-shot prompt of eval example i, with candidate `label` appended when given."""
        return self._sequence(self.zs_prefix_ids, i, label)

    def _sequence(self, prefix: Ids, i: int, label: int | None) -> list[int]:
        tail = self.candidate_ids[label] if label is not None else ()
        return [*prefix, *self.query_ids[i], *tail]


def bos_ids(tokenizer: TokenizerLike) -> Ids:
    """[bos_id] when the tokenizer's family starts prompts with BOS, else empty."""
    return (tokenizer.bos_id,) if tokenizer.add_bos and tokenizer.bos_id is not None else ()


def separator_ids(tokenizer: TokenizerLike, separator: str) -> Ids:
    """The ids closing each demonstration: the EOS id for "<eos>", else `encode(separator)`."""
    if separator == EOS_SEPARATOR:
        if tokenizer.eos_id is None:
            raise DataError('separator "<eos>" needs a tokenizer with an EOS id; this one has none')
        return (tokenizer.eos_id,)
    return tuple(tokenizer.encode(separator))


def candidate_ids(task: Task, tokenizer: TokenizerLike) -> tuple[Ids, ...]:
    """Token ids of `" " + word` for each class; refuses empty or indistinguishable answers."""
    out = tuple(tuple(tokenizer.encode(ANSWER_PREFIX + word)) for word in task.label_words)
    for word, ids in zip(task.label_words, out):
        if not ids:
            raise DataError(f"task {task.name!r}: label word {word!r} tokenizes to no tokens")
    if len(set(out)) != len(out):
        raise DataError(f"task {task.name!r}: two label words tokenize to the same ids: {list(task.label_words)}")
    return out


def fit_count(lengths: Sequence[int], start: int, reserve: int, max_len: int) -> int:
    """How many leading demonstrations fit: greedily, in order, while
    start + their lengths + reserve <= max_len. Stops at the first that does not fit (a later,
    shorter one is not tried), so the prefix is always a prefix of the drawn order."""
    total = start
    for n, length in enumerate(lengths):
        if total + length + reserve > max_len:
            return n
        total += length
    return len(lengths)


def make_format(task: Task, tokenizer: TokenizerLike, separator: str, max_len: int) -> PromptFormat:
    return PromptFormat(
        task=task.name,
        template=task.template,
        input_fields=task.input_fields,
        label_field=task.label_field,
        label_words=task.label_words,
        answer_prefix=ANSWER_PREFIX,
        separator=separator,
        separator_ids=separator_ids(tokenizer, separator),
        bos_id=tokenizer.bos_id,
        add_bos=bool(tokenizer.add_bos),
        eos_id=tokenizer.eos_id,
        max_len=max_len,
    )


def build_prompts(
    task: Task,
    tokenizer: TokenizerLike,
    *,
    seed: int,
    perm: int = 0,
    k: int = 32,
    n_eval: int | None = None,
    max_len: int,
    separator: str = "\n",
    data_dir: str | os.PathLike[str] | None = None,
) -> PromptSet:
    """Load the task's demo and eval splits and build the run's `PromptSet` (see below)."""
    demo_rows = load_split(task, task.demo_split, data_dir)
    eval_rows = load_split(task, task.eval_split, data_dir)
    return build_prompts_from_rows(
        task, tokenizer, demo_rows, eval_rows,
        seed=seed, perm=perm, k=k, n_eval=n_eval, max_len=max_len, separator=separator,
    )  # fmt: skip


def build_prompts_from_rows(
    task: Task,
    tokenizer: TokenizerLike,
    demo_rows: Sequence[Mapping[str, Any]],
    eval_rows: Sequence[Mapping[str, Any]],
    *,
    seed: int,
    perm: int = 0,
    k: int = 32,
    n_eval: int | None = None,
    max_len: int,
    separator: str = "\n",
) -> PromptSet:
    """The `PromptSet` of a run from the full demo and eval splits (rows in file order).

    Demonstrations: first k of demo split shuffled with `seed`, reordered by `perm`
    (tasks.select_demos). Eval: eval split shuffled with seed 1, first <= 2000 (the pool),
    first `n_eval` of those. The space reserved for a query is the longest query of the whole
    pool plus the longest candidate, so `k_icl` does not depend on `n_eval` (the authors'
    `max_valid_len` is taken over their whole eval set too). Demonstrations are added while
    len(prefix) + len(demonstration) + reserve <= max_len: every ICL prompt with any candidate
    then fits the context window.
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise DataError(f"max_len must be a positive integer, got {max_len!r}")
    fmt = make_format(task, tokenizer, separator, max_len)
    cands = candidate_ids(task, tokenizer)
    bos = bos_ids(tokenizer)
    eval_idx, queries, reserve = _eval_queries(task, tokenizer, eval_rows, n_eval, cands)
    if len(bos) + reserve > max_len:
        raise DataError(
            f"context window too small: max_len={max_len} cannot hold even a zero-shot prompt "
            f"({len(bos)} BOS + {reserve} tokens for the longest query and answer)"
        )
    selected = select_demos(len(demo_rows), seed, k, perm)
    labels, inputs = _demo_inputs(task, tokenizer, demo_rows, selected)
    demos = [inp + cands[y] + fmt.separator_ids for inp, y in zip(inputs, labels)]
    k_icl = fit_count([len(d) for d in demos], len(bos), reserve, max_len)
    if selected and k_icl == 0:
        raise DataError(
            f"context window too small: max_len={max_len} cannot hold one demonstration "
            f"({len(demos[0])} tokens) plus the longest query and answer ({reserve} tokens)"
            f"{' and BOS' if bos else ''}; use a model with a longer context or shorter inputs"
        )
    used = range(k_icl)
    return PromptSet(
        task=task.name,
        seed=seed,
        perm=perm,
        k=k,
        k_icl=k_icl,
        selected_indices=tuple(selected),
        demo_indices=tuple(selected[:k_icl]),
        demo_labels=tuple(labels[:k_icl]),
        demo_ids=tuple(demos[:k_icl]),
        prefix_ids=bos + tuple(t for d in demos[:k_icl] for t in d),
        zs_prefix_ids=bos,
        ft_sequences=tuple(bos + inputs[j] + cands[labels[j]] for j in used),
        ft_label_starts=tuple(len(bos) + len(inputs[j]) for j in used),
        eval_indices=tuple(eval_idx),
        gold_labels=tuple(eval_rows[i][task.label_field] for i in eval_idx),
        query_ids=queries,
        candidate_ids=cands,
        query_reserve=reserve,
        format=fmt,
    )


def _eval_queries(
    task: Task,
    tokenizer: TokenizerLike,
    eval_rows: Sequence[Mapping[str, Any]],
    n_eval: int | None,
    cands: tuple[Ids, ...],
) -> tuple[list[int], tuple[Ids, ...], int]:
    """Eval indices, their query ids, and the room to reserve: the longest query of the whole
    pool (not only of the first n_eval) plus the longest candidate."""
    eval_idx = select_eval(len(eval_rows), n_eval, task.eval_seed, task.eval_pool)
    pool = select_eval(len(eval_rows), None, task.eval_seed, task.eval_pool)
    if not pool:
        raise DataError(f"task {task.name!r}: the eval split {task.eval_split!r} has no rows")
    for i in pool:
        check_row(task, eval_rows[i], f"eval split {task.eval_split!r} row {i}")
    queries = [_encode_input(task, tokenizer, eval_rows[i]) for i in pool]
    reserve = max(map(len, queries)) + max(map(len, cands))
    return eval_idx, tuple(queries[: len(eval_idx)]), reserve


def encode_queries(
    task: Task, tokenizer: TokenizerLike, rows: Sequence[Mapping[str, Any]], indices: Sequence[int]
) -> tuple[Ids, ...]:
    """The query ids (input text in the task's template, no label) of the given rows: the eval
    queries' format, for any rows (e.g. a learning-rate selection set drawn from the train split)."""
    for i in indices:
        check_row(task, rows[i], f"row {i}")
    return tuple(_encode_input(task, tokenizer, rows[i]) for i in indices)


def _demo_inputs(
    task: Task, tokenizer: TokenizerLike, demo_rows: Sequence[Mapping[str, Any]], selected: Sequence[int]
) -> tuple[list[int], list[Ids]]:
    """Gold labels and input ids of the selected demonstrations, in prompt order."""
    for i in selected:
        check_row(task, demo_rows[i], f"demo split {task.demo_split!r} row {i}")
    labels = [demo_rows[i][task.label_field] for i in selected]
    return labels, [_encode_input(task, tokenizer, demo_rows[i]) for i in selected]


def _encode_input(task: Task, tokenizer: TokenizerLike, row: Mapping[str, Any]) -> Ids:
    return tuple(tokenizer.encode(task.input_text(row)))


def relabel(prompts: PromptSet, labels: Sequence[int]) -> PromptSet:
    """The same run with new labels on its k_icl demonstrations (a control: shuffled labels).

    Inputs, order, queries and candidates are kept; each demonstration's label tokens become those
    of its new label, in the ICL prefix and in the finetuning sequences alike. A permutation of
    the labels keeps the prefix's length, so the prompt still fits the context window."""
    if len(labels) != prompts.k_icl:
        raise DataError(f"{len(labels)} labels for {prompts.k_icl} demonstrations")
    if any(not 0 <= y < prompts.n_classes for y in labels):
        raise DataError(f"labels must be in [0, {prompts.n_classes}), got {list(labels)}")
    bos = tuple(prompts.zs_prefix_ids)
    sep = tuple(prompts.format.separator_ids)
    inputs = [tuple(seq[len(bos) : start]) for seq, start in zip(prompts.ft_sequences, prompts.ft_label_starts)]
    cands = prompts.candidate_ids
    demos = tuple(inp + tuple(cands[y]) + sep for inp, y in zip(inputs, labels))
    if sum(map(len, demos)) != sum(map(len, prompts.demo_ids)):
        raise DataError("the new labels change the prefix's length (not a permutation of label lengths)")
    return dataclasses.replace(
        prompts,
        demo_labels=tuple(int(y) for y in labels),
        demo_ids=demos,
        prefix_ids=bos + tuple(t for d in demos for t in d),
        ft_sequences=tuple(bos + inp + tuple(cands[y]) for inp, y in zip(inputs, labels)),
    )
