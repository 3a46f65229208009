"""The Hugging Face reader plus the one forward pass, against transformers on tiny random models.

Every model is built here from a config (fp32, eager attention), with all of its parameters
(norm scales and biases included) drawn at random so that a misplaced tensor shows, saved with
`save_pretrained`, read back with `load_hf_dir`, and compared on right-padded prompts of
different lengths at the real positions.
"""

from __future__ import annotations

import json
import re
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer as RawTokenizer  # noqa: E402
from tokenizers import models, pre_tokenizers, processors  # noqa: E402

from jaxicl.errors import CheckpointError, ModelNotFoundError  # noqa: E402
from jaxicl.io.hf import config_from_hf, load_hf_dir  # noqa: E402
from jaxicl.models.transformer import TAP_NAMES, forward  # noqa: E402

VOCAB = 64
PAD = 0
LOGIT_TOL = 1e-4
CACHE_TOL = 1e-5
WORDS = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 4)]


def _tiny_config(kind: str):
    """Tiny HF configs; Gemma 3 mixes sliding/full layers with a window shorter than the prompts."""
    if kind == "gemma3":
        return transformers.Gemma3TextConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
            sliding_window=4, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            query_pre_attn_scalar=16,  # != head_dim, so the query scale is really read
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 50.0},
            },
            final_logit_softcapping=4.0,
            pad_token_id=0, eos_token_id=1, bos_token_id=2,
        )
    if kind in ("llama", "llama_biased"):
        biased = kind == "llama_biased"
        return transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "linear", "factor": 3.0, "rope_theta": 100.0} if biased
            else {"rope_type": "default", "rope_theta": 500.0},
            attention_bias=biased, mlp_bias=biased, tie_word_embeddings=biased,
            pad_token_id=0, eos_token_id=1, bos_token_id=2,
        )
    if kind == "gpt2":
        return transformers.GPT2Config(
            vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4,
            bos_token_id=1, eos_token_id=1, pad_token_id=0,
        )
    if kind == "xglm":
        return transformers.XGLMConfig(
            vocab_size=VOCAB, d_model=32, ffn_dim=48, num_layers=2, attention_heads=4,
            max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        )
    raise ValueError(kind)


def _randomize(model, plus_one_norms: bool, seed: int = 0) -> None:
    """Every parameter random; norm scales around their identity (0 under Gemma's 1 + scale)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            value = 0.2 * torch.randn(p.shape, generator=g)
            is_norm_scale = p.ndim == 1 and name.endswith("weight") and ("norm" in name or ".ln_" in name)
            if is_norm_scale and not plus_one_norms:
                value += 1.0
            p.copy_(value)


def _word_tokenizer(with_bos: bool):
    """A word-level fast tokenizer over WORDS; prepends <bos> exactly when `with_bos`."""
    raw = RawTokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    if with_bos:
        raw.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"
    )


def _save_model(config, path, plus_one_norms: bool = False, **save_kwargs):
    """Build a model from an HF config, randomize it, save it; returns the torch model."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    _randomize(model, plus_one_norms=plus_one_norms)
    model.eval()
    model.save_pretrained(path, **save_kwargs)
    return model


def _save_tiny(kind: str, path, **save_kwargs):
    """Build, randomize and save one tiny model (with a tokenizer for Gemma 3 and GPT-2)."""
    model = _save_model(_tiny_config(kind), path, plus_one_norms=kind == "gemma3", **save_kwargs)
    if kind in ("gemma3", "gpt2"):
        _word_tokenizer(with_bos=kind == "gemma3").save_pretrained(path)
    return model


def built_once(tmp_path_factory, save):
    """kind -> (directory, torch model), each kind built by `save(kind, path)` once per module."""
    built = {}

    def get(kind: str):
        if kind not in built:
            path = tmp_path_factory.mktemp(kind)
            built[kind] = (path, save(kind, path))
        return built[kind]

    return get


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """kind -> (directory, torch model), built once per module."""
    return built_once(tmp_path_factory, _save_tiny)


def _pad(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids [B, T] and the valid mask."""
    t = max(len(r) for r in rows)
    ids = np.full((len(rows), t), PAD, np.int32)
    valid = np.zeros((len(rows), t), bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        valid[i, : len(r)] = True
    return ids, valid


def _random_rows(lengths: list[int], seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [list(rng.integers(3, VOCAB, n)) for n in lengths]


def _torch_logits(model, ids: np.ndarray, valid: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(valid, dtype=torch.long))
    return out.logits.numpy()


def _jax_logits(config, params, ids: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.asarray(forward(params, config, jnp.asarray(ids), valid=jnp.asarray(valid)).logits)


def _max_delta(model, config, params, rows: list[list[int]]) -> float:
    ids, valid = _pad(rows)
    delta = np.abs(_jax_logits(config, params, ids, valid) - _torch_logits(model, ids, valid))
    return float(delta[valid].max())


# --- parity -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gemma3", "llama", "llama_biased", "gpt2", "xglm"])
def test_logits_match_transformers(tiny, kind):
    path, model = tiny(kind)
    config, params, _ = load_hf_dir(path)
    rows = _random_rows([11, 6, 3, 9], seed=1)
    delta = _max_delta(model, config, params, rows)
    print(f"\n{kind}: max |delta logit| = {delta:.2e}")
    assert delta <= LOGIT_TOL


def test_gemma3_config_is_read_as_written(tiny):
    path, _ = tiny("gemma3")
    config, _, _ = load_hf_dir(path)
    assert config.layer_is_local == (True, False, True)
    assert config.sliding_window == 4
    assert (config.rope_base, config.rope_local_base, config.rope_scaling_factor) == (1000.0, 50.0, 2.0)
    assert config.query_scale == pytest.approx(16**-0.5)
    assert (config.attn_logit_softcap, config.final_logit_softcap) == (None, 4.0)


def test_gemma3_attention_softcap_is_refused(tiny, tmp_path):
    """transformers' Gemma 3 ignores attn_logit_softcapping; we refuse it rather than guess."""
    path, _ = tiny("gemma3")
    copy = shutil.copytree(path, tmp_path / "gemma3")
    _edit_config(copy, attn_logit_softcapping=50.0)
    with pytest.raises(CheckpointError, match=r"config\.json.*attn_logit_softcapping=50\.0"):
        load_hf_dir(copy)


@pytest.mark.parametrize(
    "kind, change",
    [
        ("gemma3", dict(sliding_window=None, layer_is_local=())),
        ("gemma3", dict(layer_is_local=(True, True, True))),
        ("gemma3", dict(rope_local_base=1000.0)),
        ("gemma3", dict(rope_scaling_factor=1.0)),
        ("gemma3", dict(query_scale=None)),
        ("gemma3", dict(final_logit_softcap=None)),
        ("llama_biased", dict(rope_scaling_factor=1.0)),
        ("xglm", dict(position_offset=0)),
        ("xglm", dict(embed_scale=1.0)),
        ("xglm", dict(activation="gelu_tanh")),
    ],
)
def test_tiny_models_exercise_each_knob(tiny, kind, change):
    """Parity is only evidence if getting a knob wrong would break it on these prompts."""
    path, model = tiny(kind)
    config, params, _ = load_hf_dir(path)
    # 5x the tolerance: exact vs tanh GELU is the closest call (about 7e-4 here).
    assert _max_delta(model, config.replace(**change), params, _random_rows([11, 6, 3, 9], seed=1)) > 5 * LOGIT_TOL


def test_gemma3_tokenizer_prompts_match_transformers(tiny):
    """Prompts built by the loaded tokenizer (with the BOS it prepends) give the same logits."""
    path, model = tiny("gemma3")
    config, params, tokenizer = load_hf_dir(path)
    assert tokenizer.add_bos and config.add_bos and tokenizer.bos_id == config.bos_token_id == 2
    texts = ["w1 w2 w3 w4 w5 w6 w7 w8 w9", "w10 w11", "w12 w13 w14 w15 w16 w17"]
    rows = [tokenizer.prompt_ids(t) for t in texts]
    assert rows[1] == [2, 14, 15]
    assert _max_delta(model, config, params, rows) <= LOGIT_TOL


def test_gpt2_tokenizer_adds_no_bos(tiny):
    path, _ = tiny("gpt2")
    config, _, tokenizer = load_hf_dir(path)
    assert not tokenizer.add_bos and not config.add_bos
    assert tokenizer.prompt_ids("w0 w1") == [4, 5]


def test_sharded_checkpoint(tiny, tmp_path):
    _, model = tiny("llama")
    model.save_pretrained(tmp_path, max_shard_size="8KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    config, params, _ = load_hf_dir(tmp_path)
    assert _max_delta(model, config, params, _random_rows([7, 4], seed=2)) <= LOGIT_TOL


def test_bfloat16_checkpoint_reads_as_float32(tiny, tmp_path):
    path, _ = tiny("llama")
    tensors = load_file(path / "model.safetensors")
    shutil.copy(path / "config.json", tmp_path / "config.json")
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}, tmp_path / "model.safetensors")
    _, params, _ = load_hf_dir(tmp_path)
    expected = tensors["model.layers.1.mlp.down_proj.weight"].astype(ml_dtypes.bfloat16).astype(np.float32).T
    assert params["blocks"]["down"]["w"].dtype == np.float32
    np.testing.assert_array_equal(params["blocks"]["down"]["w"][1], expected)


@pytest.mark.parametrize(
    "body, extra",
    [
        ("model.language_model.", "model.vision_tower.patch_embedding.weight"),  # transformers 5
        ("language_model.model.", "vision_tower.vision_model.embeddings.patch_embedding.weight"),  # 4
    ],
)
def test_gemma3_multimodal_wrapper(tiny, tmp_path, body, extra):
    """A `gemma3` config whose text_config holds the text model; vision tensors are skipped."""
    path, _ = tiny("gemma3")
    text_config = json.loads((path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": text_config}))
    tensors = {body + k.removeprefix("model."): v for k, v in load_file(path / "model.safetensors").items()}
    tensors[extra] = np.zeros((2, 3), np.float32)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    expected_config, expected, _ = load_hf_dir(path)
    config, params, _ = load_hf_dir(tmp_path)
    assert config == expected_config
    jax.tree.map(np.testing.assert_array_equal, params, expected)


def test_full_size_legacy_gemma3_config():
    """transformers-4 style keys: rope_theta / rope_local_base_freq / rope_scaling, a window pattern."""
    raw = {
        "model_type": "gemma3_text", "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 262144,
        "sliding_window": 512, "sliding_window_pattern": 6, "rope_theta": 1e6, "rope_local_base_freq": 1e4,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "max_position_embeddings": 32768,
    }
    config = config_from_hf(raw)
    assert config.layer_is_local == tuple((i + 1) % 6 != 0 for i in range(18))
    assert (config.rope_base, config.rope_local_base, config.rope_scaling_factor) == (1e6, 1e4, 8.0)
    assert config.query_scale == 256**-0.5 and config.embed_scale == 640**0.5
    assert config.norm_plus_one and config.qk_norm and config.post_norms and config.activation == "gelu_tanh"


# --- per-head reads and writes -------------------------------------------------------------------

OUTPUT_PROJECTIONS = ("self_attn.o_proj", "self_attn.out_proj", "attn.c_proj", "attention.dense")


def output_projections(model) -> list:
    """Each layer's attention output projection: the module whose input is the heads' outputs."""
    found = {}
    for name, module in model.named_modules():
        if name.endswith(OUTPUT_PROJECTIONS):
            found[int(re.search(r"\.(\d+)\.", name).group(1))] = module
    return [found[i] for i in sorted(found)]


def _hooked_logits(model, ids, valid, hooks: dict) -> np.ndarray:
    """transformers' logits with forward pre-hooks {layer: hook} on the output projections."""
    handles = [output_projections(model)[layer].register_forward_pre_hook(hook) for layer, hook in hooks.items()]
    try:
        return _torch_logits(model, ids, valid)
    finally:
        for handle in handles:
            handle.remove()


def head_parity(model, config, params, rows, layer: int, head: int) -> tuple[float, float, float]:
    """(max |Δ| of the z tap against the output projection's input in transformers, max |Δ logit|
    with head `head` of block `layer` zeroed by `head_transform` against the same edit in a
    pre-hook, and how far that edit moves the logits), over the rows' real positions."""
    ids, valid = _pad(rows)
    b, t = ids.shape
    seen = {}

    def record(i):
        return lambda module, args: seen.__setitem__(i, args[0].detach().numpy())

    plain = _hooked_logits(model, ids, valid, {i: record(i) for i in range(config.n_layers)})
    out = forward(params, config, jnp.asarray(ids), valid=jnp.asarray(valid), logits_at=None, taps=("z",))
    z = np.asarray(out.taps["z"]).reshape(config.n_layers, b, t, -1)
    z_delta = max(float(np.abs(z[i] - seen[i])[valid].max()) for i in range(config.n_layers))

    def zero_head(module, args):
        x = args[0].clone()
        x.view(b, t, config.n_heads, config.head_dim)[:, :, head] = 0
        return (x,)

    theirs = _hooked_logits(model, ids, valid, {layer: zero_head})
    which = (jnp.arange(config.n_heads) == head)[None, None, :, None]
    edit = lambda z, at: jnp.where((at == layer) & which, 0.0, z)  # noqa: E731
    ours = np.asarray(forward(params, config, jnp.asarray(ids), valid=jnp.asarray(valid), head_transform=edit).logits)
    return z_delta, float(np.abs(ours - theirs)[valid].max()), float(np.abs(theirs - plain)[valid].max())


@pytest.mark.parametrize("kind", ["gemma3", "llama", "llama_biased", "gpt2", "xglm"])
def test_head_reads_and_writes_match_transformers(tiny, kind):
    path, model = tiny(kind)
    config, params, _ = load_hf_dir(path)
    z_delta, edit_delta, moved = head_parity(model, config, params, _random_rows([11, 6, 3, 9], seed=1), layer=1, head=2)
    print(f"\n{kind}: max |delta z| = {z_delta:.2e}, zeroed head: max |delta logit| = {edit_delta:.2e} (moved {moved:.2f})")
    assert z_delta <= LOGIT_TOL and edit_delta <= LOGIT_TOL
    assert moved > 100 * LOGIT_TOL  # the edit matters, so agreeing on it is evidence


# --- KV cache and taps --------------------------------------------------------------------------


def _full_rows_logits(config, params, rows):
    ids, valid = _pad(rows)
    return _jax_logits(config, params, ids, valid)


def cache_split_delta(path) -> float:
    """Padded prefixes of different lengths through the cache, then padded suffixes: the max |Δ|
    between the suffix logits and one forward over prefix + suffix."""
    config, params, _ = load_hf_dir(path)
    prefixes, suffixes = _random_rows([6, 3], seed=3), _random_rows([5, 2], seed=4)
    p_ids, p_valid = _pad(prefixes)
    s_ids, s_valid = _pad(suffixes)
    cache = forward(params, config, jnp.asarray(p_ids), valid=jnp.asarray(p_valid), logits_at=None).cache
    cached = np.asarray(forward(params, config, jnp.asarray(s_ids), valid=jnp.asarray(s_valid), cache=cache).logits)
    full = _full_rows_logits(config, params, [p + s for p, s in zip(prefixes, suffixes)])
    return max(
        float(np.abs(cached[row, : len(s)] - full[row, len(p) : len(p) + len(s)]).max())
        for row, (p, s) in enumerate(zip(prefixes, suffixes))
    )


def test_cache_continuation_equals_full_forward(tiny):
    """Padded prefixes of different lengths, then padded suffixes through the cache."""
    path, _ = tiny("gemma3")
    assert cache_split_delta(path) <= CACHE_TOL


def test_shared_prefix_cache_broadcasts_over_suffixes(tiny):
    """A batch-1 prefix cache reused by several padded suffixes of different lengths."""
    path, _ = tiny("gemma3")
    config, params, _ = load_hf_dir(path)
    (prefix,) = _random_rows([6], seed=5)
    suffixes = _random_rows([5, 1, 3], seed=6)
    cache = forward(params, config, jnp.asarray([prefix], jnp.int32), logits_at=None).cache
    s_ids, s_valid = _pad(suffixes)
    out = forward(params, config, jnp.asarray(s_ids), valid=jnp.asarray(s_valid), cache=cache)
    assert out.cache.k.shape[1] == len(suffixes)
    cached = np.asarray(out.logits)
    full = _full_rows_logits(config, params, [prefix + s for s in suffixes])
    for row, s in enumerate(suffixes):
        expected = full[row, len(prefix) : len(prefix) + len(s)]
        np.testing.assert_allclose(cached[row, : len(s)], expected, atol=CACHE_TOL, rtol=0)


def test_taps_at_probe_equal_sliced_taps(tiny):
    path, _ = tiny("gemma3")
    config, params, _ = load_hf_dir(path)
    ids, valid = _pad(_random_rows([7, 4, 5], seed=7))
    probe = jnp.asarray(valid.sum(axis=1) - 1)
    kwargs = dict(valid=jnp.asarray(valid), logits_at=None, taps=TAP_NAMES)
    every = forward(params, config, jnp.asarray(ids), **kwargs).taps
    at_probe = forward(params, config, jnp.asarray(ids), tap_at=probe, **kwargs).taps
    rows = np.arange(ids.shape[0])
    for name in TAP_NAMES:
        sliced = np.asarray(every[name])[:, rows, np.asarray(probe)]
        np.testing.assert_allclose(np.asarray(at_probe[name]), sliced, atol=1e-6, rtol=0, err_msg=name)


# --- refusals -----------------------------------------------------------------------------------


@pytest.fixture
def llama_copy(tiny, tmp_path):
    """A private copy of the tiny Llama directory, to damage."""
    path, _ = tiny("llama")
    return shutil.copytree(path, tmp_path / "llama")


def _edit_config(path, **changes) -> None:
    raw = json.loads((path / "config.json").read_text())
    raw.update(changes)
    (path / "config.json").write_text(json.dumps(raw))


def _edit_tensors(path, edit) -> None:
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_nonexistent_directory(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        load_hf_dir(tmp_path / "nothing-here")


def test_unknown_model_type(llama_copy):
    _edit_config(llama_copy, model_type="mamba")
    with pytest.raises(CheckpointError, match=r"config\.json.*model_type 'mamba'"):
        load_hf_dir(llama_copy)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 500.0}}, "rope_parameters.*'llama3'"),
        ({"rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling.*'dynamic'"),
        ({"hidden_act": "quick_gelu"}, "hidden_act='quick_gelu'"),
        ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
    ],
)
def test_unsupported_settings_are_refused(llama_copy, changes, match):
    _edit_config(llama_copy, **changes)
    with pytest.raises(CheckpointError, match=r"config\.json.*" + match):
        load_hf_dir(llama_copy)


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"model_type": "xglm", "pad_token_id": 3}, "pad_token_id=3"),
        ({"model_type": "gpt2", "scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
        ({"model_type": "gemma3_text", "use_bidirectional_attention": True}, "use_bidirectional_attention=True"),
        ({"model_type": "gemma3_text", "num_hidden_layers": 2, "layer_types": ["chunked_attention"] * 2},
         "layer_types.*chunked_attention"),
        ({"model_type": "gemma3_text", "rope_parameters": {"sliding_attention": {"rope_type": "linear", "factor": 2}}},
         "rope_parameters.*sliding-window"),
        ({"model_type": "gemma3", "text_config": {"model_type": "gemma2"}}, "text_config.model_type 'gemma2'"),
        ({"model_type": "llama", "hidden_size": 48, "num_attention_heads": 4, "num_key_value_heads": 3},
         "n_heads=4 is not a multiple of n_kv_heads=3"),
    ],
)
def test_config_refusals_name_the_setting(raw, match):
    with pytest.raises(CheckpointError, match=r"^config\.json: .*" + match):
        config_from_hf(raw)


def test_wrong_tensor_shape(llama_copy):
    name = "model.layers.1.self_attn.k_proj.weight"
    _edit_tensors(llama_copy, lambda t: t.update({name: np.zeros((3, 32), np.float32)}))
    with pytest.raises(CheckpointError, match=rf"{name} has shape \(3, 32\), expected \(16, 32\)"):
        load_hf_dir(llama_copy)


def test_missing_tensor(llama_copy):
    name = "model.layers.0.mlp.up_proj.weight"
    _edit_tensors(llama_copy, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=rf"missing tensor {name}"):
        load_hf_dir(llama_copy)


def test_unexpected_tensor(llama_copy):
    name = "model.layers.0.self_attn.extra_proj.weight"
    _edit_tensors(llama_copy, lambda t: t.update({name: np.zeros((2, 2), np.float32)}))
    with pytest.raises(CheckpointError, match=rf"unexpected tensors.*{name}"):
        load_hf_dir(llama_copy)


def test_missing_tokenizer_fails_only_on_use(llama_copy):
    config, params, tokenizer = load_hf_dir(llama_copy)
    assert params["blocks"]["q"]["w"].shape == (2, 32, 32)
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        tokenizer.encode("w1")
