"""The two shipped GGUF models against transformers' own GGUF loading, on real SST-2 prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jaxicl  # noqa: E402
from jaxicl.io import registry  # noqa: E402

pytestmark = pytest.mark.slow


def _sst2_prompts(data_dir) -> list[str]:
    """A zero-shot prompt and one with 32 demonstrations, in the paper's SST-2 template."""
    with open(data_dir / "sst2" / "train.jsonl") as f:
        train = [json.loads(next(f)) for _ in range(32)]
    with open(data_dir / "sst2" / "validation.jsonl") as f:
        query = json.loads(next(f))
    words = ["Negative", "Positive"]
    demos = "".join(f"Sentence: {r['sentence'].strip()} Label: {words[r['label']]}\n" for r in train)
    q = f"Sentence: {query['sentence'].strip()} Label:"
    return [q, demos + q]


@pytest.fixture(scope="module", params=["gemma3-270m", "smollm2-135m"])
def pair(request):
    path = registry.resolve(request.param)
    lm = jaxicl.load(request.param)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, torch_dtype=torch.float32
    ).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return request.param, lm, ref, tok


def test_last_position_log_probs_match_transformers(pair, data_dir):
    name, lm, ref, tok = pair
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
