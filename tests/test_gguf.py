"""The GGUF reader against transformers, on tiny random models written the way llama.cpp does.

Each model is built here (fp32, eager attention, every parameter random), converted with
llama.cpp's conventions (tests/tiny_gguf.py), read back with `load_gguf`, and run through the
one forward pass on right-padded prompts; logits are compared with torch at the real positions.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import gguf
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxicl.errors import CheckpointError, ModelNotFoundError  # noqa: E402
from jaxicl.io import gguf as gguf_io  # noqa: E402
from jaxicl.io.gguf import load_gguf  # noqa: E402
from jaxicl.io.hf import load_hf_dir  # noqa: E402
from jaxicl.models.transformer import forward  # noqa: E402
from tests import tiny_gguf as tg  # noqa: E402

Q = gguf.GGMLQuantizationType
LOGIT_TOL = 1e-4
PROMPTS = [
    "The quick brown fox jumps over the lazy dog, and the dog sleeps on.",
    "Label: positive",
    "Café 🙂 naïve: a tedious film over 2024 newlines\n",
]


@pytest.fixture(scope="module")
def raw_tok():
    return tg.train_tokenizer()


@pytest.fixture(scope="module")
def vocab(raw_tok) -> int:
    return raw_tok.get_vocab_size()


@pytest.fixture(scope="module")
def llama_file(tmp_path_factory, raw_tok, vocab):
    """A valid F32 llama file (untied, so output.weight is there too) and its model."""
    model = tg.llama_model(vocab, tied=False)
    path = tg.write_model(tmp_path_factory.mktemp("llama") / "tiny.gguf", model, "llama", raw_tok, add_bos=False)
    return path, model


# --------------------------------------------------------------------------------------------
# Logit parity


def _padded(ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(map(len, ids))
    batch = np.zeros((len(ids), width), np.int32)
    valid = np.zeros((len(ids), width), bool)
    for row, x in enumerate(ids):
        batch[row, : len(x)] = x
        valid[row, : len(x)] = True
    return batch, valid


def _max_logit_error(path: Path, model) -> tuple[float, int]:
    """Max |Δ logit| of jaxicl (one right-padded batch) vs torch (one prompt at a time)."""
    config, params, tok = load_gguf(path)
    ids = [tok.encode(p) for p in PROMPTS]
    batch, valid = _padded(ids)
    ours = np.asarray(forward(params, config, jnp.asarray(batch), valid=jnp.asarray(valid)).logits)
    worst = 0.0
    for row, x in enumerate(ids):
        with torch.no_grad():
            ref = model(torch.tensor([x])).logits[0].numpy()
        worst = max(worst, float(np.abs(ours[row, : len(x)] - ref).max()))
    return worst, batch.shape[1]


@pytest.mark.parametrize("tied,biased", [(True, False), (False, True)], ids=["tied", "untied-biased"])
def test_llama_logits_match_torch(tmp_path, raw_tok, vocab, tied, biased):
    model = tg.llama_model(vocab, tied=tied, biased=biased)
    path = tg.write_model(tmp_path / "llama.gguf", model, "llama", raw_tok, add_bos=False)
    config = load_gguf(path)[0]
    assert (config.family, config.n_heads, config.n_kv_heads, config.head_dim) == ("llama", 4, 2, 16)
    assert config.tie_embeddings == tied and config.attn_bias == biased and config.mlp_bias == biased
    err, _ = _max_logit_error(path, model)
    assert err <= LOGIT_TOL


GEMMA_PATTERNS = {
    # Gemma 3's own rule, nothing written: layers 0-4 local, 5 global, 6 local
    "every-6th-global": (None, None),
    # a file that states its pattern (llama.cpp's per-layer bool array: True = sliding window)
    "pattern-key": (
        ["sliding_attention", "full_attention", "full_attention", "sliding_attention"],
        [True, False, False, True],
    ),
}


@pytest.mark.parametrize("pattern", list(GEMMA_PATTERNS))
def test_gemma3_logits_match_torch(tmp_path, raw_tok, vocab, pattern):
    layer_types, key = GEMMA_PATTERNS[pattern]
    model = tg.gemma3_model(vocab, layer_types=layer_types)
    extra = {"gemma3.attention.sliding_window_pattern": key} if key else None
    path = tg.write_model(tmp_path / "gemma3.gguf", model, "gemma3", raw_tok, extra_metadata=extra)
    config = load_gguf(path)[0]
    assert config.layer_is_local == tuple(t == "sliding_attention" for t in model.config.layer_types)
    assert any(config.layer_is_local) and not all(config.layer_is_local)
    err, width = _max_logit_error(path, model)
    assert width > 3 * config.sliding_window  # the window really cuts
    assert err <= LOGIT_TOL


def test_gemma3_metadata_maps_to_config(tmp_path, raw_tok, vocab):
    model = tg.gemma3_model(vocab)
    path = tg.write_model(tmp_path / "gemma3.gguf", model, "gemma3", raw_tok, add_bos=True)
    config, params, _ = load_gguf(path)
    assert config.family == "gemma3" and config.norm_plus_one and config.qk_norm and config.post_norms
    assert config.activation == "gelu_tanh" and config.gated_mlp and config.tie_embeddings
    assert (config.d_model, config.n_layers, config.head_dim, config.d_ff) == (64, 7, 32, 96)
    assert config.embed_scale == pytest.approx(8.0) and config.scale == pytest.approx(32**-0.5)
    assert (config.rope_base, config.rope_local_base, config.rope_scaling_factor) == (20000.0, 10000.0, 2.0)
    assert (config.sliding_window, config.max_positions, config.norm_eps) == (4, 128, pytest.approx(1e-6))
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id, config.add_bos) == (1, 2, 0, True)
    # the +1 llama.cpp adds to every Gemma norm is taken off again (up to float32 rounding at 1)
    hf = model.state_dict()
    for ours, theirs in [
        (params["blocks"]["q_norm"]["scale"][3], "model.layers.3.self_attn.q_norm.weight"),
        (params["blocks"]["post_mlp_norm"]["scale"][6], "model.layers.6.post_feedforward_layernorm.weight"),
        (params["final_norm"]["scale"], "model.norm.weight"),
    ]:
        np.testing.assert_allclose(ours, hf[theirs].numpy(), rtol=0, atol=2e-7)
    assert all(v.dtype == np.float32 for v in _leaves(params))


# Other architectures: each file written from a tiny HF model that is also saved as an HF directory,
# so the GGUF load is checked against the HF load (and both against torch).
FAMILY_FILES = {
    # name: (tiny model, GGUF architecture, extra metadata)
    "qwen2": (lambda v: tg.qwen2_model(v), "qwen2", None),  # q/k/v biases, no o bias, untied
    "qwen2-tied": (lambda v: tg.qwen2_model(v, tied=True), "qwen2", None),
    "qwen3": (tg.qwen3_model, "qwen3", None),  # QK-norms, head_dim != d / heads
    "mistral": (tg.mistral_model, "llama", {"llama.attention.sliding_window": 4}),  # window shorter than prompts
    "mistral-no-window": (lambda v: tg.mistral_model(v, window=None), "llama", None),  # as llama.cpp writes it
    "gptneox": (tg.gptneox_model, "gptneox", None),  # fused QKV, partial RoPE, parallel residual
    "gptneox-sequential": (lambda v: tg.gptneox_model(v, parallel=False), "gptneox", None),
}
ARCHITECTURE_KNOBS = (
    "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_positions", "norm_kind", "rope_base",
    "rope_scaling_factor", "rotary_dim", "sliding_window", "layer_is_local", "rope_local_base", "qk_norm",
    "attn_bias", "attn_out_bias", "mlp_bias", "gated_mlp", "activation", "parallel_residual", "tie_embeddings",
)  # fmt: skip


def _logits(config, params, batch: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.asarray(forward(params, config, jnp.asarray(batch), valid=jnp.asarray(valid)).logits)


@pytest.mark.parametrize("name", list(FAMILY_FILES))
def test_family_file_equals_hf_directory(tmp_path, raw_tok, vocab, name):
    build, arch, extra = FAMILY_FILES[name]
    model = build(vocab)
    model.save_pretrained(tmp_path / "hf")
    path = tg.write_model(tmp_path / f"{name}.gguf", model, arch, raw_tok, add_bos=False, extra_metadata=extra)
    config, params, tok = load_gguf(path)
    hf_config, hf_params, _ = load_hf_dir(tmp_path / "hf")
    assert config.family == ("llama" if name == "mistral-no-window" else hf_config.family)
    assert {k: getattr(config, k) for k in ARCHITECTURE_KNOBS} == {k: getattr(hf_config, k) for k in ARCHITECTURE_KNOBS}
    batch, valid = _padded([tok.encode(p) for p in PROMPTS])
    delta = np.abs(_logits(config, params, batch, valid) - _logits(hf_config, hf_params, batch, valid))[valid].max()
    err, width = _max_logit_error(path, model)
    print(f"\n{name}: max |delta logit| GGUF vs HF load = {delta:.2e}, vs torch = {err:.2e}")
    assert delta <= LOGIT_TOL and err <= LOGIT_TOL
    assert width > 3 * 4  # longer than the Mistral window


def test_qwen2_file_rows_are_not_permuted(tmp_path, raw_tok, vocab):
    """llama.cpp permutes q/k rows for `llama` only: a qwen2 file holds HF's rows as they are."""
    model = tg.qwen2_model(vocab)
    path = tg.write_model(tmp_path / "qwen2.gguf", model, "qwen2", raw_tok)
    _, params, _ = load_gguf(path)
    hf = model.state_dict()
    np.testing.assert_array_equal(params["blocks"]["q"]["w"][1], hf["model.layers.1.self_attn.q_proj.weight"].numpy().T)
    np.testing.assert_array_equal(params["blocks"]["k"]["b"][0], hf["model.layers.0.self_attn.k_proj.bias"].numpy())


def test_gptneox_fused_qkv_is_split_per_head(tmp_path, raw_tok, vocab):
    """The q | k | v row blocks of attn_qkv are transformers' [heads, 3, head_dim] rows, regrouped."""
    model = tg.gptneox_model(vocab)
    path = tg.write_model(tmp_path / "neox.gguf", model, "gptneox", raw_tok)
    _, params, _ = load_gguf(path)
    fused = model.state_dict()["gpt_neox.layers.1.attention.query_key_value.weight"].numpy()
    per_head = fused.reshape(4, 3, 16, 64)
    for index, leaf in enumerate(("q", "k", "v")):
        expected = per_head[:, index].reshape(64, 64).T
        np.testing.assert_array_equal(params["blocks"][leaf]["w"][1], expected, err_msg=leaf)


def test_qwen_sliding_window_metadata_is_refused(tmp_path, raw_tok, vocab):
    """Which Qwen layers a window covers is not in GGUF (max_window_layers): refused, not guessed."""
    model = tg.qwen2_model(vocab)
    extra = {"qwen2.attention.sliding_window": 4}
    path = tg.write_model(tmp_path / "q.gguf", model, "qwen2", raw_tok, extra_metadata=extra)
    with pytest.raises(CheckpointError, match=r"qwen2\.attention\.sliding_window is not supported for qwen2"):
        load_gguf(path)


def test_partial_rope_is_refused_for_llama(tmp_path, llama_file):
    path = _variant(tmp_path, llama_file[1], meta={"llama.rope.dimension_count": 8})
    with pytest.raises(CheckpointError, match=r"llama\.rope\.dimension_count=8 with key_length=16.*partial RoPE"):
        load_gguf(path)


def test_llama_metadata_maps_to_config(llama_file):
    config, params, _ = load_gguf(llama_file[0])
    assert (config.family, config.activation, config.norm_plus_one, config.qk_norm) == ("llama", "silu", False, False)
    assert (config.rope_base, config.norm_eps, config.max_positions) == (500.0, pytest.approx(1e-5), 128)
    assert not config.layer_is_local and config.sliding_window is None
    assert config.add_bos is False  # what the file says, as SmolLM2's does
    assert params["unembed"].shape == (64, config.vocab_size)


def _leaves(tree):
    for value in tree.values():
        yield from _leaves(value) if isinstance(value, dict) else [value]


# --------------------------------------------------------------------------------------------
# Quantized tensors

# Worst-case error of one quantized value as a fraction of the tensor's largest |value|:
# half a step for round-to-nearest, a full step where the grid's far end is clipped (Q4_0, Q5_0).
QUANT_BOUNDS = {Q.Q8_0: 1 / 127, Q.Q5_0: 1 / 16, Q.Q5_1: 1 / 31, Q.Q4_0: 1 / 8, Q.Q4_1: 1 / 15,
                Q.F16: 2**-11, Q.BF16: 2**-8}


def _hf_leaf(params: dict, hf_name: str, layer: int | None) -> np.ndarray:
    """The loaded tensor that holds an HF weight, back in HF's [out, in] layout."""
    table = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate",
             "up_proj": "up", "down_proj": "down"}
    if hf_name == "model.embed_tokens.weight":
        return params["embed"]
    if hf_name == "lm_head.weight":
        return params["unembed"].T
    module = hf_name.split(".")[-2]
    return params["blocks"][table[module]]["w"][layer].T


@pytest.mark.parametrize("qtype", list(QUANT_BOUNDS), ids=lambda q: q.name)
def test_quantized_tensors_are_the_dequantized_file(tmp_path, raw_tok, vocab, qtype):
    """Loaded = gguf.quants.dequantize of exactly what was written, and close to the originals.

    Quantization works on whole rows of [out, in], so llama.cpp's Q/K row permutation commutes
    with it and the expectation can be formed in HF's layout.
    """
    model = tg.llama_model(vocab, tied=False)
    path = tg.write_model(tmp_path / "q.gguf", model, "llama", raw_tok, qtype=qtype)
    _, params, _ = load_gguf(path)
    checked = 0
    for name, value in model.state_dict().items():
        value = value.numpy()
        if value.ndim != 2:
            continue
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        loaded = _hf_leaf(params, name, layer)
        expected = gguf.quants.dequantize(gguf.quants.quantize(value, qtype), qtype)
        np.testing.assert_array_equal(loaded, expected, err_msg=name)
        assert np.abs(loaded - value).max() <= QUANT_BOUNDS[qtype] * np.abs(value).max() * 1.01, name
        checked += 1
    assert checked == 2 + 2 * 7


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gptneox"])
def test_q8_0_logits_match_torch_on_the_dequantized_weights(tmp_path, raw_tok, vocab, arch):
    """End to end through a quantized file: the reference is the torch model whose matrices are
    replaced by their Q8_0 round trip, so the tolerance stays that of F32 parity (quantization is
    per row, so llama's row permutation and GPT-NeoX's row regrouping commute with it)."""
    model = {"llama": tg.llama_model, "gemma3": tg.gemma3_model, "gptneox": tg.gptneox_model}[arch](vocab)
    path = tg.write_model(tmp_path / "q8.gguf", model, arch, raw_tok, qtype=Q.Q8_0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(p.numpy(), Q.Q8_0), Q.Q8_0)))
    err, _ = _max_logit_error(path, model)
    assert err <= LOGIT_TOL


# --------------------------------------------------------------------------------------------
# Tokenizer

TEXTS = tg.CORPUS + [
    "unseen words: zebra quokka xylophone",
    "  leading and trailing spaces  ",
    "specials stay whole: </s> <s>",
    "",
]


def test_tokenizer_round_trip(llama_file, raw_tok):
    config, _, tok = load_gguf(llama_file[0])
    assert tok.vocab_size == raw_tok.get_vocab_size() == config.vocab_size
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == raw_tok.encode(text).ids, text
        assert tok.decode(ids) == text
        assert not ids or ids[0] != tg.BOS or text.startswith("<s>")
    assert tok.encode("</s>") == [tg.EOS]
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (tg.BOS, tg.EOS, False)
    assert tok.prompt_ids("Label:") == tok.encode("Label:")


def test_tokenizer_prepends_bos_only_where_the_file_says(tmp_path, raw_tok, vocab):
    path = tg.write_model(tmp_path / "bos.gguf", tg.llama_model(vocab), "llama", raw_tok, add_bos=True)
    tok = load_gguf(path)[2]
    assert tok.encode("Label:")[0] != tg.BOS
    assert tok.prompt_ids("Label:") == [tg.BOS] + tok.encode("Label:")


# --------------------------------------------------------------------------------------------
# The reader's speed-up reads exactly what gguf's own reader reads


def test_plain_array_reader_matches_gguf_reader(llama_file):
    ours, stock = gguf_io._open(str(llama_file[0])), gguf.GGUFReader(llama_file[0])
    assert isinstance(ours, gguf_io._PlainArrayReader)
    assert list(ours.fields) == list(stock.fields)
    for key, field in stock.fields.items():
        assert ours.fields[key].types == field.types
        assert ours.fields[key].contents() == field.contents(), key
    assert [t.name for t in ours.tensors] == [t.name for t in stock.tensors]
    for a, b in zip(ours.tensors, stock.tensors):
        assert (a.tensor_type, a.data_offset) == (b.tensor_type, b.data_offset)
        np.testing.assert_array_equal(a.data, b.data)


# --------------------------------------------------------------------------------------------
# Bad input


def _variant(tmp_path: Path, model, *, meta=None, drop_meta=(), tensors=None, drop=(), arch="llama") -> Path:
    """The llama fixture's file with some metadata / tensors changed, added or removed."""
    metadata = tg.model_metadata(model, "llama") | tg.tokenizer_metadata(tg.train_tokenizer(), add_bos=False)
    metadata = {k: v for k, v in (metadata | (meta or {})).items() if k not in drop_meta}
    weights = {k: v for k, v in (tg.gguf_tensors(model, "llama") | (tensors or {})).items() if k not in drop}
    return tg.write_gguf(tmp_path / "variant.gguf", arch, metadata, weights)


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy.gguf"
    shutil.copyfile(src, dst)
    return dst


def test_missing_path_is_model_not_found(tmp_path):
    missing = tmp_path / "nope" / "model.gguf"
    with pytest.raises(ModelNotFoundError, match=re.escape(str(missing))):
        load_gguf(missing)


@pytest.mark.parametrize("damage", ["empty", "bad-magic", "truncated-header", "truncated-data"])
def test_damaged_file_is_checkpoint_error_naming_file(tmp_path, llama_file, damage):
    path = _copy(llama_file[0], tmp_path)
    blob = path.read_bytes()
    if damage == "empty":
        blob = b""
    elif damage == "bad-magic":
        blob = b"GGML" + blob[4:]
    elif damage == "truncated-header":
        blob = blob[:200]
    else:
        blob = blob[: len(blob) - 1000]
    path.write_bytes(blob)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_gguf(path)


def test_corrupt_metadata_type_is_checkpoint_error(tmp_path, llama_file):
    path = _copy(llama_file[0], tmp_path)
    field = gguf.GGUFReader(path).fields["llama.block_count"]
    type_offset = field.offset + 8 + len("llama.block_count")
    blob = bytearray(path.read_bytes())
    blob[type_offset : type_offset + 4] = (999).to_bytes(4, "little")
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_gguf(path)


def test_wrongly_typed_metadata_names_the_key(tmp_path, llama_file):
    path = _variant(tmp_path, llama_file[1], meta={"llama.block_count": "two"})
    with pytest.raises(CheckpointError, match=r"llama\.block_count.*integer"):
        load_gguf(path)


def test_missing_metadata_names_the_key(tmp_path, llama_file):
    path = _variant(tmp_path, llama_file[1], drop_meta=("llama.embedding_length",))
    with pytest.raises(CheckpointError, match=r"llama\.embedding_length"):
        load_gguf(path)


def test_unsupported_architecture_names_it_and_the_file(tmp_path, llama_file):
    path = _variant(tmp_path, llama_file[1], arch="mamba")
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}.*'mamba'") as e:
        load_gguf(path)
    assert all(repr(arch) in str(e.value) for arch in ("llama", "gemma3", "qwen2", "qwen3", "gptneox"))
    assert set(gguf_io.GGUF_FAMILIES) == set(gguf_io._CONFIG_BUILDERS)


def test_unsupported_rope_scaling_is_refused(tmp_path, llama_file):
    path = _variant(tmp_path, llama_file[1], meta={"llama.rope.scaling.type": "yarn"})
    with pytest.raises(CheckpointError, match="yarn"):
        load_gguf(path)


def test_wrong_tensor_shape_names_the_tensor(tmp_path, llama_file):
    path = _variant(tmp_path, llama_file[1], tensors={"blk.1.attn_q.weight": np.zeros((64, 32), np.float32)})
    with pytest.raises(CheckpointError, match=r"blk\.1\.attn_q\.weight has shape \(64, 32\), expected \(64, 64\)"):
        load_gguf(path)


def test_missing_tensor_names_it(tmp_path, llama_file):
    path = _variant(tmp_path, llama_file[1], drop=("blk.1.ffn_up.weight",))
    with pytest.raises(CheckpointError, match=r"missing tensor blk\.1\.ffn_up\.weight"):
        load_gguf(path)


def test_unknown_tensor_is_refused_by_name(tmp_path, llama_file):
    path = _variant(tmp_path, llama_file[1], tensors={"rope_freqs.weight": np.ones(8, np.float32)})
    with pytest.raises(CheckpointError, match=r"rope_freqs\.weight"):
        load_gguf(path)


def test_undequantizable_tensor_names_it(tmp_path, llama_file):
    weight = tg.gguf_tensors(llama_file[1], "llama")["blk.0.ffn_down.weight"].astype(np.float64)
    path = _variant(tmp_path, llama_file[1], tensors={"blk.0.ffn_down.weight": weight})
    with pytest.raises(CheckpointError, match=r"blk\.0\.ffn_down\.weight.*F64"):
        load_gguf(path)


def test_tokenizer_larger_than_embedding_is_refused(tmp_path, vocab):
    """Without <|endoftext|> transformers' byte-level builder adds one: an id past the embedding."""
    raw = tg.train_tokenizer(vocab, specials=["<pad>", "<s>", "</s>"])
    model = tg.llama_model(raw.get_vocab_size())
    path = tg.write_model(tmp_path / "tok.gguf", model, "llama", raw)
    with pytest.raises(CheckpointError, match="tokenizer has"):
        load_gguf(path)


def test_tokenizer_that_does_not_merge_is_refused(tmp_path, llama_file):
    """A tokenizer that decodes right but lost its merges (transformers 5.17.0's Gemma 3 GGUF build
    did this) would split every prompt into characters: refused, naming the file and examples."""
    merges = tg.tokenizer_metadata(tg.train_tokenizer(), add_bos=False)["tokenizer.ggml.merges"]
    path = _variant(tmp_path, llama_file[1], meta={"tokenizer.ggml.merges": merges[:1]})
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}.*does not reproduce its own vocabulary"):
        load_gguf(path)


def test_vocabulary_round_trip_counts_the_fixture_whole(llama_file):
    from jaxicl.io.tokenizer import vocabulary_round_trip

    kept, checked, failures = vocabulary_round_trip(load_gguf(llama_file[0])[2].backend)
    assert checked >= 20 and kept == checked and failures == []
