"""`jaxicl eval` end to end on a tiny Hugging Face Llama directory and the real SST-2/TREC data.

The model is random (its predictions mean nothing); what is checked is the contract of the results
file: its keys, that every prompt can be rebuilt from the file alone (its `format`, the data rows
it indexes, the model's tokenizer) into exactly the PromptSet's ids, that its scores are the
log-probabilities a plain transformers forward gives on those rebuilt prompts, that the same run
writes the same bytes, and that bad input stops the command with exit status 2, a message naming
the problem and no results file.

The tokenizer is a byte-level BPE trained on the task texts (so prompts stay short), saved as a
`PreTrainedTokenizerFast` that prepends <s>. Its normalizer deletes zero-width spaces together with
the whitespace before them, which gives a label word that tokenizes to nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from tokenizers import Tokenizer as RawTokenizer  # noqa: E402

import jaxicl  # noqa: E402
from jaxicl import cli  # noqa: E402
from jaxicl.data import build_prompts, get_task  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# One worker runs the whole module, so its module-scoped model, tokenizer and eval runs are built once.
pytestmark = pytest.mark.xdist_group("eval_cli")
TREC_SPEC = REPO / "experiments" / "tasks" / "trec.json"
VOCAB = 768
WINDOW = 1024
ZWSP = "\u200b"
RUN = ["--task", "sst2", "--k", "4", "--seed", "2", "--n-eval", "8"]
SCORE_TOL = 1e-4  # results-file scores (rounded to 6 decimals) vs transformers


def _read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def _train_tokenizer(data_dir: Path) -> RawTokenizer:
    texts = [r["sentence"] for r in _read_jsonl(data_dir / "sst2" / "validation.jsonl")]
    texts += [r["sentence"] for r in _read_jsonl(data_dir / "sst2" / "train.jsonl", 3000)]
    texts += [r["text"] for r in _read_jsonl(data_dir / "trec" / "test.jsonl")]
    texts += [r["text"] for r in _read_jsonl(data_dir / "trec" / "train.jsonl", 2000)]
    words = "Negative Positive Abbreviation Entity Description Human Location Number"
    texts += [f"Sentence: Label: Question: Type: {words}\n"] * 200
    tok = RawTokenizer(models.BPE())
    tok.normalizer = normalizers.Replace(Regex(r"\s*\x{200B}+"), "")
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        ),
    )  # fmt: skip
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data_dir) -> Path:
    """A tiny random Llama (GQA) with the trained tokenizer, saved with save_pretrained."""
    path = tmp_path_factory.mktemp("tiny-llama")
    raw = _train_tokenizer(data_dir)
    assert raw.get_vocab_size() <= VOCAB
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=WINDOW,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g) + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(path)
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference(model_dir):
    """transformers' own model and tokenizer from the directory (not jaxicl's loader)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(model_dir)


def _eval(model_dir: Path, out: Path | None, *args: str) -> int:
    argv = ["eval", "--model", str(model_dir), *args]
    return cli.main(argv + (["--out", str(out)] if out is not None else []))


@pytest.fixture(scope="module")
def sst2_run(model_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tmp.json"
    assert _eval(model_dir, out, *RUN, "--data-dir", str(data_dir)) == 0
    return out


# --- the results file --------------------------------------------------------------------------


def test_results_file_has_the_documented_keys(sst2_run):
    record = json.loads(sst2_run.read_text())
    for key in ("task", "model", "seed", "perm", "k", "k_icl", "n_eval", "accuracy", "demo_split", "eval_split",
                "demo_indices", "format", "examples", "versions", "machine"):  # fmt: skip
        assert key in record, key
    assert (record["task"], record["seed"], record["perm"], record["k"], record["n_eval"]) == ("sst2", 2, 0, 4, 8)
    assert (record["demo_split"], record["eval_split"]) == ("train", "validation")
    assert record["k_icl"] == 4 == len(record["demo_indices"])
    fmt = record["format"]
    for key in ("template", "input_fields", "label_field", "label_words", "answer_prefix", "separator",
                "separator_ids", "bos_id", "add_bos", "eos_id", "max_len"):  # fmt: skip
        assert key in fmt, key
    assert fmt["max_len"] == WINDOW and fmt["separator"] == "\n" and fmt["add_bos"] is True
    assert len(record["examples"]) == 8
    for ex in record["examples"]:
        assert set(ex) >= {"index", "gold", "zs_pred", "icl_pred", "zs_scores", "icl_scores"}
        assert len(ex["zs_scores"]) == len(ex["icl_scores"]) == 2
        assert ex["zs_pred"] == int(np.argmax(ex["zs_scores"])) and ex["icl_pred"] == int(np.argmax(ex["icl_scores"]))
        assert all(s < 0 for s in ex["zs_scores"] + ex["icl_scores"])
    for kind in ("zs", "icl"):
        hits = [ex[f"{kind}_pred"] == ex["gold"] for ex in record["examples"]]
        assert record["accuracy"][kind] == pytest.approx(np.mean(hits))


def _rebuild(record: dict, data_dir: Path, tokenizer) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """(ICL prefix, queries, candidates) from the results file, the data rows and the tokenizer only."""
    fmt = record["format"]
    task_dir = data_dir / record["task"]
    demo_rows = _read_jsonl(task_dir / f"{record['demo_split']}.jsonl")
    eval_rows = _read_jsonl(task_dir / f"{record['eval_split']}.jsonl")

    def enc(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    def fill(row: dict) -> str:
        text = fmt["template"]
        for field in fmt["input_fields"]:
            text = text.replace("{" + field + "}", row[field])
        return text

    cands = [enc(fmt["answer_prefix"] + word) for word in fmt["label_words"]]
    sep = enc(fmt["separator"]) if fmt["separator"] != "<eos>" else [fmt["eos_id"]]
    assert sep == fmt["separator_ids"]
    prefix = [fmt["bos_id"]] if fmt["add_bos"] else []
    for i in record["demo_indices"]:
        row = demo_rows[i]
        prefix += enc(fill(row)) + cands[row[fmt["label_field"]]] + sep
    queries = [enc(fill(eval_rows[ex["index"]])) for ex in record["examples"]]
    for ex in record["examples"]:
        assert ex["gold"] == eval_rows[ex["index"]][fmt["label_field"]]
    return prefix, queries, cands


def test_every_prompt_rebuilds_from_the_file_alone(sst2_run, data_dir, model_dir, reference):
    record = json.loads(sst2_run.read_text())
    prefix, queries, cands = _rebuild(record, data_dir, reference[1])
    lm = jaxicl.load(model_dir)
    prompts = build_prompts(get_task("sst2"), lm.tokenizer, seed=2, k=4, n_eval=8, max_len=WINDOW, data_dir=data_dir)
    assert list(prompts.prefix_ids) == prefix
    assert [list(q) for q in prompts.query_ids] == queries
    assert [list(c) for c in prompts.candidate_ids] == cands
    assert list(prompts.demo_indices) == record["demo_indices"]
    assert list(prompts.eval_indices) == [ex["index"] for ex in record["examples"]]
    assert list(prompts.zs_prefix_ids) == [record["format"]["bos_id"]]


def test_scores_are_transformers_log_probs_of_the_rebuilt_prompts(sst2_run, data_dir, reference):
    model, tokenizer = reference
    record = json.loads(sst2_run.read_text())
    prefix, queries, cands = _rebuild(record, data_dir, tokenizer)
    bos = [record["format"]["bos_id"]]
    worst = 0.0
    for ex, q in zip(record["examples"], queries):
        for kind, start in (("zs", bos), ("icl", prefix)):
            for c, cand in enumerate(cands):
                ids = start + q + cand
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1).numpy()
                want = sum(logp[len(start) + len(q) - 1 + j, t] for j, t in enumerate(cand))
                worst = max(worst, abs(ex[f"{kind}_scores"][c] - want))
    assert worst <= SCORE_TOL, worst


def test_same_seed_writes_identical_bytes(model_dir, data_dir, sst2_run, tmp_path):
    again = tmp_path / "again.json"
    assert _eval(model_dir, again, *RUN, "--data-dir", str(data_dir)) == 0
    assert again.read_bytes() == sst2_run.read_bytes()
    other = tmp_path / "other.json"
    assert _eval(model_dir, other, *RUN[:-4], "--seed", "3", "--n-eval", "8", "--data-dir", str(data_dir)) == 0
    assert json.loads(other.read_text())["demo_indices"] != json.loads(sst2_run.read_text())["demo_indices"]


def test_eos_separator_and_escaped_separators(model_dir, data_dir, reference, tmp_path):
    for given, meant in (("<eos>", "<eos>"), ("\\n\\n", "\n\n"), (" \\u2192 ", " \u2192 ")):
        out = tmp_path / "sep.json"
        assert _eval(model_dir, out, *RUN, "--data-dir", str(data_dir), "--separator", given) == 0
        record = json.loads(out.read_text())
        assert record["format"]["separator"] == meant
        eos = [record["format"]["eos_id"]]
        want = eos if meant == "<eos>" else reference[1].encode(meant, add_special_tokens=False)
        assert record["format"]["separator_ids"] == want
        prefix, _, _ = _rebuild(record, data_dir, reference[1])
        assert prefix.count(want[-1]) >= record["k_icl"]


def test_custom_task_spec_through_the_cli(model_dir, data_dir, tmp_path, capsys, reference):
    out = tmp_path / "trec.json"
    args = ["--task", str(TREC_SPEC), "--k", "6", "--seed", "1", "--n-eval", "5", "--data-dir", str(data_dir)]
    assert _eval(model_dir, out, *args) == 0
    assert "trec" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["task"] == "trec" and (record["demo_split"], record["eval_split"]) == ("train", "test")
    assert record["format"]["label_field"] == "coarse_label" and len(record["format"]["label_words"]) == 6
    assert len(record["examples"]) == 5 and all(len(ex["icl_scores"]) == 6 for ex in record["examples"])
    prefix, queries, _ = _rebuild(record, data_dir, reference[1])
    lm = jaxicl.load(model_dir)
    prompts = build_prompts(get_task(TREC_SPEC), lm.tokenizer, seed=1, k=6, n_eval=5, max_len=WINDOW, data_dir=data_dir)
    assert list(prompts.prefix_ids) == prefix and [list(q) for q in prompts.query_ids] == queries


# --- bad input: exit status 2, a message that names the problem, no results file --------------


def _fails(capsys, model_dir, out: Path, *args: str) -> str:
    code = _eval(model_dir, out, *args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert not out.exists(), "no results file on error"
    assert not list(out.parent.glob(f".{out.name}.*")), "no temporary file left behind"
    assert "jaxicl: error: " in err and "Traceback" not in err
    return err[err.index("jaxicl: error: ") :]


def test_unknown_task(model_dir, data_dir, tmp_path, capsys):
    err = _fails(capsys, model_dir, tmp_path / "r.json", "--task", "sst3", "--seed", "2", "--data-dir", str(data_dir))
    assert "unknown task 'sst3'" in err and "sst2" in err


def test_missing_split_file(model_dir, data_dir, tmp_path, capsys):
    root = tmp_path / "data"
    (root / "sst2").mkdir(parents=True)
    (root / "sst2" / "train.jsonl").symlink_to(data_dir / "sst2" / "train.jsonl")
    err = _fails(capsys, model_dir, tmp_path / "r.json", *RUN, "--data-dir", str(root))
    assert f"missing split file {root / 'sst2' / 'validation.jsonl'}" in err and "train.jsonl" in err


def test_malformed_jsonl_line_names_file_and_line(model_dir, data_dir, tmp_path, capsys):
    root = tmp_path / "data"
    (root / "sst2").mkdir(parents=True)
    (root / "sst2" / "train.jsonl").symlink_to(data_dir / "sst2" / "train.jsonl")
    lines = (data_dir / "sst2" / "validation.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[6] = lines[6][: len(lines[6]) // 2] + "\n"  # line 7 cut in half
    broken = root / "sst2" / "validation.jsonl"
    broken.write_text("".join(lines), encoding="utf-8")
    err = _fails(capsys, model_dir, tmp_path / "r.json", *RUN, "--data-dir", str(root))
    assert f"{broken} line 7: malformed JSON" in err


def test_label_word_that_tokenizes_to_nothing(model_dir, data_dir, tmp_path, capsys):
    spec = {
        "name": "sst2-zw",
        "template": "Sentence: {sentence} Label:",
        "label_words": ["Negative", ZWSP],
        "data_files": {split: str(data_dir / "sst2" / f"{split}.jsonl") for split in ("train", "validation")},
    }  # fmt: skip
    spec_path = tmp_path / "zw.json"
    spec_path.write_text(json.dumps(spec))
    err = _fails(capsys, model_dir, tmp_path / "r.json", "--task", str(spec_path), "--seed", "2", "--n-eval", "4")
    assert "label word '\\u200b' tokenizes to no tokens" in err and "sst2-zw" in err


def test_window_too_small_for_one_demonstration(model_dir, data_dir, tmp_path, capsys):
    lm = jaxicl.load(model_dir)
    prompts = build_prompts(get_task("sst2"), lm.tokenizer, seed=2, k=4, n_eval=8, max_len=WINDOW, data_dir=data_dir)
    first_demo = len(prompts.demo_ids[0])
    assert first_demo > 1
    max_len = 1 + prompts.query_reserve + first_demo - 1  # BOS + room for any query: one token short
    out = tmp_path / "r.json"
    err = _fails(capsys, model_dir, out, *RUN, "--data-dir", str(data_dir), "--max-len", str(max_len))
    assert f"max_len={max_len} cannot hold one demonstration ({first_demo} tokens)" in err
    err = _fails(capsys, model_dir, out, *RUN, "--data-dir", str(data_dir), "--max-len", str(prompts.query_reserve))
    assert "cannot hold even a zero-shot prompt" in err
    # One more token and the first demonstration fits.
    assert _eval(model_dir, out, *RUN, "--data-dir", str(data_dir), "--max-len", str(max_len + 1)) == 0
    assert json.loads(out.read_text())["k_icl"] >= 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-len", str(WINDOW + 1)], f"--max-len {WINDOW + 1} exceeds"),
        (["--max-len", "0"], "--max-len must be an integer >= 2, got 0"),
        (["--n-eval", "0"], "--n-eval must be an integer >= 1, got 0"),
        (["--k", "-1"], "--k must be an integer >= 0, got -1"),
        (["--perm", "5"], "perm must be in 0..4"),
        (["--separator", "\\x"], "--separator '\\\\x': invalid backslash escape"),
    ],
)
def test_bad_run_settings(model_dir, data_dir, tmp_path, capsys, args, message):
    err = _fails(capsys, model_dir, tmp_path / "r.json", *RUN, "--data-dir", str(data_dir), *args)
    assert message in err


def test_missing_model(data_dir, tmp_path, capsys):
    err = _fails(capsys, tmp_path / "no-such-model", tmp_path / "r.json", *RUN, "--data-dir", str(data_dir))
    assert "no-such-model" in err
