"""The documentation runs: every ```python block of README.md and docs/*.md executes, and every
relative link in them resolves (to a file, and to a heading when it names an anchor).

Blocks run in order, one shared namespace per file, on a tiny model: `jaxicl.load` returns a tiny
random Gemma 3 with a word-level tokenizer for any registry name, so `lm = jaxicl.load("gemma3-270m")`
takes milliseconds. The namespace starts with `lm`, `prompts` (a tiny PromptSet) and `ids`, which
pages that are not the tour may use as given. A block that must not run is preceded by a line
`<!-- not run: why -->`; the test counts those, so exemptions stay few and deliberate.
docs/results/ is the committed reproduction's record and is not checked here.
"""

from __future__ import annotations

import re
import textwrap
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxicl
from jaxicl import LM
from jaxicl import transforms as T
from jaxicl.data import Task, build_prompts_from_rows
from jaxicl.io import registry
from jaxicl.io.tokenizer import Tokenizer
from jaxicl.models.config import ModelConfig
from jaxicl.models.init import init_params

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.+?)\s*-->$")
MIN_BLOCKS = 12  # fewer collected blocks than this means the parser, not the docs, went wrong
MAX_NOT_RUN = 2

VOCAB = 512
TINY = ModelConfig(
    family="gemma3", vocab_size=VOCAB, d_model=32, n_layers=4, n_heads=4, n_kv_heads=1, head_dim=8, d_ff=48,
    max_positions=1024, norm_plus_one=True, qk_norm=True, post_norms=True, activation="gelu_tanh",
    embed_scale=32**0.5, sliding_window=16, layer_is_local=(True, True, False, True), final_logit_softcap=30.0,
    bos_token_id=1, eos_token_id=2, pad_token_id=0,
)  # fmt: skip


# --- the docs' code blocks -------------------------------------------------------------------------


def code_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """(line number, code, why it is not run or None) of every ```python block of a markdown file."""
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```python":
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        before = [line.strip() for line in lines[: start - 1] if line.strip()]
        skip = NOT_RUN.match(before[-1]) if before else None
        blocks.append((start, textwrap.dedent("\n".join(body)), skip.group(1) if skip else None))
        i += 1
    return blocks


ALL_BLOCKS = {path: code_blocks(path) for path in DOCS}
FILES_WITH_CODE = [path for path, blocks in ALL_BLOCKS.items() if blocks]


def test_the_docs_have_code_to_run():
    """The parser found the blocks: a broken fence or a renamed file would silently run nothing."""
    blocks = [b for path in DOCS for b in ALL_BLOCKS[path]]
    skipped = [(path.name, line, why) for path in DOCS for line, _, why in ALL_BLOCKS[path] if why]
    assert len(blocks) >= MIN_BLOCKS, f"only {len(blocks)} python blocks in {[p.name for p in DOCS]}"
    assert len(skipped) <= MAX_NOT_RUN, f"too many blocks exempted: {skipped}"
    assert ROOT / "README.md" in FILES_WITH_CODE and ROOT / "docs" / "finetuning.md" in FILES_WITH_CODE


# --- the tiny stand-in model ---------------------------------------------------------------------


class WordBackend:
    """A word-level stand-in for a Hugging Face tokenizer: each whitespace-led word (or run of
    whitespace) is one id, hashed into the vocabulary, so any text encodes to about as many
    tokens as a real BPE gives it."""

    all_special_ids = [0, 1, 2]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [4 + zlib.crc32(piece.encode()) % (VOCAB - 4) for piece in re.findall(r"\s*\S+|\s+", text)]

    def decode(self, ids) -> str:
        return " ".join(f"<{i}>" for i in ids)

    def __len__(self) -> int:
        return VOCAB


def tiny_lm() -> LM:
    params = init_params(TINY, jax.random.PRNGKey(0))
    tokenizer = Tokenizer(backend=WordBackend(), bos_id=1, eos_id=2, add_bos=True)
    return LM(config=TINY, params=params, tokenizer=tokenizer, source="tiny stand-in")


def tiny_prompts(lm: LM):
    task = Task(name="toy", template="Review: {t} Label:", label_words=("bad", "good"), eval_split="test", lr=5e-4)
    words = ["fine", "dull", "witty", "slow", "bright", "flat", "warm"]
    rows = [{"t": " ".join(words[(i + j) % 7] for j in range(i % 5 + 2)), "label": i % 2} for i in range(40)]
    return build_prompts_from_rows(task, lm.tokenizer, rows, rows[:12], seed=1, k=6, max_len=TINY.max_positions)


@pytest.fixture(scope="module")
def tiny():
    lm = tiny_lm()
    return lm, tiny_prompts(lm)


# --- checks on what particular blocks computed ---------------------------------------------------


def _changed(before: dict, after: dict) -> tuple[dict, dict, set[str]]:
    old, new = T.flatten(before), T.flatten(after)
    return old, new, {p for p in old if not np.array_equal(old[p], new[p])}


def check_lcgd_first_half(ns: dict) -> None:
    """Only the first half's keys and values moved."""
    old, new, changed = _changed(ns["lm"].params, ns["result"].params)
    assert changed == {"blocks/k/w", "blocks/v/w"}
    half = len(ns["half"])
    assert np.array_equal(old["blocks/k/w"][half:], new["blocks/k/w"][half:])
    assert not np.array_equal(old["blocks/k/w"][:half], new["blocks/k/w"][:half])


def check_gd_attn_readout(ns: dict) -> None:
    """The hand-written masked-SGD loop stepped the keys and values and nothing else."""
    assert _changed(ns["lm"].params, ns["params"])[2] == {"blocks/k/w", "blocks/v/w"}


# A block containing the marker text gets the check run on its namespace right after it.
CHECKS = {
    "LCGD restricted to the first half of the layers": check_lcgd_first_half,
    "GD whose loss reads every layer's attention output": check_gd_attn_readout,
}


@pytest.mark.parametrize("path", FILES_WITH_CODE, ids=[str(p.relative_to(ROOT)) for p in FILES_WITH_CODE])
def test_code_blocks_run(path, tiny, monkeypatch, tmp_path):
    lm, prompts = tiny

    def load(name_or_path=registry.DEFAULT_MODEL, dtype=None):
        assert str(name_or_path) in registry.REGISTRY, f"a docs block loads {name_or_path!r}; use a registry name"
        return lm

    monkeypatch.setattr(jaxicl, "load", load)
    monkeypatch.setattr(jaxicl.api, "load", load)
    monkeypatch.chdir(tmp_path)  # whatever a block writes lands here
    ns = {"__name__": "docs", "lm": lm, "prompts": prompts, "ids": lm.tokenizer.encode("Sentence: a witty movie. Label:")}
    ran = 0
    for line, code, why in ALL_BLOCKS[path]:
        if why:
            continue
        try:
            exec(compile(code, f"{path.name}:{line}", "exec"), ns)
        except Exception as e:
            raise AssertionError(f"{path.relative_to(ROOT)}, the block at line {line}: {type(e).__name__}: {e}") from e
        for marker, check in CHECKS.items():
            if marker in code:
                check(ns)
        ran += 1
    assert ran, f"{path.name}: every block is exempted"


def test_every_check_finds_its_block():
    text = "\n".join(code for path in DOCS for _, code, why in ALL_BLOCKS[path] if not why)
    for marker in CHECKS:
        assert marker in text, f"no docs block contains {marker!r} any more"


# --- links -----------------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose(path: Path) -> str:
    """The file without its fenced code blocks and inline code spans (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_relative_links_resolve():
    checked, broken = 0, []
    for path in DOCS:
        for target in LINK.findall(_prose(path)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            checked += 1
            if not dest.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)
    assert checked >= 20, f"only {checked} relative links found"


def test_slug_follows_github():
    assert slug("Install, run, test") == "install-run-test"
    assert slug("The batched engine (`--batch-runs`)") == "the-batched-engine---batch-runs"
    assert slug("Parity with transformers") == "parity-with-transformers"
