"""GD and LCGD steps against a PyTorch implementation of the same steps on tiny Hugging Face models.

PyTorch side, written independently of jaxicl: mean next-token cross-entropy of the demonstration;
for LCGD, forward pre-hooks detach every decoder layer's input, forward hooks keep every layer's
output, and the loss is the sum over layers of the CE of lm_head(final_norm(output)); then plain
SGD on the key/value projections only (GPT-2: the k and v thirds of the fused c_attn; GPT-NeoX: the
k and v rows of each head in the fused query_key_value). The model after the steps is saved with
`save_pretrained`, read back with `load_hf_dir`, and compared with jaxicl's finetuned params tensor
by tensor (Llama: GQA, no biases; GPT-2 and XGLM: biases; Qwen2: q/k/v biases; Qwen3: QK-norms;
Mistral: a window shorter than the demonstrations; GPT-NeoX: partial RoPE, parallel residual;
OPT: learned positions at offset 2).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxicl.engine import finetune as F  # noqa: E402
from jaxicl.engine import transforms as T  # noqa: E402
from jaxicl.io.hf import load_hf_dir  # noqa: E402

VOCAB = 64
TOL = 1e-5
LR = 0.2
DEMOS = [[2, 9, 33, 17, 50, 4, 61, 12, 40, 7, 23], [2, 5, 44, 18, 30, 59, 3, 27]]


KINDS = ["llama", "gpt2", "xglm", "qwen2", "qwen3", "mistral", "gpt_neox", "opt"]
LLAMA_LIKE = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    pad_token_id=0, eos_token_id=1, bos_token_id=2,
)  # fmt: skip
LLAMA_LIKE_CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**LLAMA_LIKE),
    "qwen2": lambda: transformers.Qwen2Config(**LLAMA_LIKE),
    "qwen3": lambda: transformers.Qwen3Config(**LLAMA_LIKE, head_dim=16),
    "mistral": lambda: transformers.MistralConfig(**LLAMA_LIKE, sliding_window=4),
}


def tiny_model(kind: str):
    if kind in LLAMA_LIKE_CONFIGS:
        config = LLAMA_LIKE_CONFIGS[kind]()
    elif kind == "gpt_neox":
        config = transformers.GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=64, rotary_pct=0.5, rotary_emb_base=500.0, bos_token_id=2, eos_token_id=1,
        )  # fmt: skip
    elif kind == "opt":
        config = transformers.OPTConfig(
            vocab_size=VOCAB, hidden_size=32, ffn_dim=48, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=64, pad_token_id=1, bos_token_id=2, eos_token_id=2,
        )  # fmt: skip
    elif kind == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=3, n_head=4,
            bos_token_id=2, eos_token_id=1, pad_token_id=0,
        )  # fmt: skip
    else:
        config = transformers.XGLMConfig(
            vocab_size=VOCAB, d_model=32, ffn_dim=48, num_layers=3, attention_heads=4,
            max_position_embeddings=64, pad_token_id=1, bos_token_id=2, eos_token_id=0,
        )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            value = 0.3 * torch.randn(p.shape, generator=g)
            if p.ndim == 1 and name.endswith("weight") and ("norm" in name or ".ln_" in name):
                value = 1.0 + 0.3 * value
            p.copy_(value)
    return model.eval()  # eval: no dropout; gradients still flow


def parts(model, kind: str):
    """(decoder layers, final norm, lm_head)."""
    if kind == "gpt2":
        return model.transformer.h, model.transformer.ln_f, model.lm_head
    if kind == "xglm":
        return model.model.layers, model.model.layer_norm, model.lm_head
    if kind == "gpt_neox":
        return model.gpt_neox.layers, model.gpt_neox.final_layer_norm, model.get_output_embeddings()
    if kind == "opt":
        return model.model.decoder.layers, model.model.decoder.final_layer_norm, model.lm_head
    return model.model.layers, model.model.norm, model.lm_head


def _neox_kv_rows(config) -> torch.Tensor:
    """Rows of query_key_value that are keys or values: its rows are [heads, 3 (q, k, v), head_dim]."""
    hd = config.hidden_size // config.num_attention_heads
    rows = torch.arange(3 * config.hidden_size).reshape(config.num_attention_heads, 3, hd)
    return rows[:, 1:].reshape(-1)


def kv_slices(model, kind: str):
    """(parameter, index) pairs of the key/value projections."""
    layers, _, _ = parts(model, kind)
    out = []
    for layer in layers:
        if kind == "gpt2":
            d = model.config.n_embd
            kv = slice(d, 3 * d)  # c_attn holds q, k, v side by side
            out += [(layer.attn.c_attn.weight, (slice(None), kv)), (layer.attn.c_attn.bias, kv)]
        elif kind == "gpt_neox":
            rows = _neox_kv_rows(model.config)
            out += [(layer.attention.query_key_value.weight, rows), (layer.attention.query_key_value.bias, rows)]
        else:
            for proj in (layer.self_attn.k_proj, layer.self_attn.v_proj):
                out += [(p, slice(None)) for p in (proj.weight, proj.bias) if p is not None]
    return out


def _detach_input(module, args, kwargs):
    if args:
        return (args[0].detach(),) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs, hidden_states=kwargs["hidden_states"].detach())
    return args, kwargs


def torch_backward(model, kind: str, seq: list[int], lcgd: bool) -> float:
    """The objective's loss on one demonstration, its gradients left in the parameters' .grad."""
    ids = torch.tensor([seq])
    targets = ids[0, 1:]
    model.zero_grad(set_to_none=True)
    if not lcgd:
        logits = model(input_ids=ids).logits[0, :-1]
        loss = torch.nn.functional.cross_entropy(logits, targets)
    else:
        layers, final_norm, head = parts(model, kind)
        outputs = []
        hooks = [layer.register_forward_pre_hook(_detach_input, with_kwargs=True) for layer in layers]
        hooks += [
            layer.register_forward_hook(lambda m, a, out: outputs.append(out[0] if isinstance(out, tuple) else out))
            for layer in layers
        ]
        try:
            model(input_ids=ids)
        finally:
            for h in hooks:
                h.remove()
        assert len(outputs) == len(layers)
        loss = sum(
            torch.nn.functional.cross_entropy(head(final_norm(h))[0, :-1], targets) for h in outputs
        )
    loss.backward()
    return float(loss.detach())


def torch_step(model, kind: str, seq: list[int], lcgd: bool) -> float:
    """One plain SGD step on the key/value projections; returns the loss before it."""
    loss = torch_backward(model, kind, seq, lcgd)
    with torch.no_grad():
        for p, index in kv_slices(model, kind):
            p[index] -= LR * p.grad[index]
    return loss


@pytest.mark.parametrize("method", ["gd", "lcgd"])
@pytest.mark.parametrize("kind", KINDS)
def test_steps_match_pytorch(tmp_path, kind, method):
    model = tiny_model(kind)
    model.save_pretrained(tmp_path / "before")
    config, params, _ = load_hf_dir(tmp_path / "before")

    torch_losses = [torch_step(model, kind, seq, lcgd=method == "lcgd") for seq in DEMOS]
    model.save_pretrained(tmp_path / "after")
    _, want, _ = load_hf_dir(tmp_path / "after")

    result = F.finetune(params, config, DEMOS, F.FinetuneOptions(lr=LR, objective=F.METHODS[method]))
    np.testing.assert_allclose(result.losses, torch_losses, rtol=TOL, atol=TOL)
    got, before, want = (T.flatten(t) for t in (result.params, params, want))
    assert set(got) == set(want)
    moved = delta = 0.0
    for path in want:
        np.testing.assert_allclose(np.asarray(got[path]), np.asarray(want[path]), rtol=0, atol=TOL, err_msg=path)
        step = float(np.abs(np.asarray(want[path]) - np.asarray(before[path])).max())
        assert (step > 0) == (path in T.kv_mask(config).paths), path
        moved = max(moved, step)
        delta = max(delta, float(np.abs(np.asarray(got[path]) - np.asarray(want[path])).max()))
    loss_delta = float(np.abs(np.asarray(result.losses) - np.asarray(torch_losses)).max())
    print(f"\n{kind} {method}: max |delta param| = {delta:.2e}, max |delta loss| = {loss_delta:.2e}, step {moved:.2e}")
    assert moved > 100 * TOL  # the steps are far larger than the tolerance
