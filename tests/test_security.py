"""Security: no pickle loads, safetensors only, no remote code unless asked for, servers on localhost."""

from __future__ import annotations

import ast
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

import gated_lpi_exp

PACKAGE = Path(gated_lpi_exp.__file__).parent
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _calls(attr: str):
    """``(file, call)`` for every call of ``<something>.<attr>(...)`` in the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
                yield path.relative_to(PACKAGE.parent), node


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return ast.unparse(kw.value)
    return None


def test_no_pickle_loads_anywhere_in_the_package():
    torch_loads = [(f, c) for f, c in _calls("load") if ast.unparse(c.func) == "torch.load"]
    for file, call in torch_loads:
        assert _keyword(call, "weights_only") == "True", (
            f"{file}:{call.lineno}: torch.load without weights_only=True"
        )
    for file, call in _calls("load"):
        if ast.unparse(call.func) in ("np.load", "numpy.load"):
            assert _keyword(call, "allow_pickle") == "False", f"{file}:{call.lineno}: np.load may unpickle"
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "allow_pickle=True" not in text, path
        assert not re.search(r"\bpickle\.loads?\(|\bjoblib\.load\(|\bdill\.loads?\(", text), path


def test_models_load_as_safetensors_without_remote_code_unless_configured():
    for file, call in _calls("from_pretrained"):
        assert _keyword(call, "trust_remote_code") not in ("True",), f"{file}:{call.lineno}"
    loader = [c for f, c in _calls("from_pretrained") if f.parts[-2:] == ("checkpoints", "folder.py")]
    auto = [c for c in loader if ast.unparse(c.func).startswith("Auto")]
    assert len(auto) == 2  # the model and the tokenizer (the family check reads config.json as JSON)
    for call in auto:
        assert _keyword(call, "trust_remote_code") == "trust_remote_code"
    assert [_keyword(c, "use_safetensors") for c in auto if "AutoModel" in ast.unparse(c.func)] == ["True"]
    # OLMo v1's native layout is converted into a known class: its weights come in as a state dict.
    native = [c for c in loader if c not in auto]
    assert [ast.unparse(c.func) for c in native] == ["OlmoForCausalLM.from_pretrained"]
    assert _keyword(native[0], "state_dict") == "state"


@pytest.mark.parametrize("pattern", ["docs/*.md", "README.md", "conf/**/*.yaml"])
def test_documented_mlflow_servers_bind_localhost(pattern):
    for path in PROJECT_ROOT.glob(pattern):
        for line in path.read_text().splitlines():
            if re.search(r"\bmlflow (server|ui)\b", line) and "--host" in line:
                assert "--host 127.0.0.1" in line, f"{path}: {line}"
            elif re.search(r"\bmlflow (server|ui) --", line):
                raise AssertionError(f"{path}: an mlflow server without --host 127.0.0.1: {line}")


PLANTED = r"""
#include <stdio.h>
#include <stdint.h>
__attribute__((constructor)) static void planted(void) {
  FILE* f = fopen(MARKER, "w"); if (f) { fputs("ran", f); fclose(f); }
}
void expsum(const float* q, const float* p, const float* a, const float* c, const float* s, const float* b,
            float* out, int64_t n0, int64_t n1, int64_t r0, int64_t r1, int64_t rows, int64_t vocab) {}
"""


def _plant(path: Path, marker: Path, work: Path) -> None:
    """A shared library with the kernel's symbol whose loading writes ``marker`` (its code ran)."""
    src = work / "planted.c"
    src.write_text(PLANTED)
    subprocess.run(
        ["gcc", "-shared", "-fPIC", f'-DMARKER="{marker}"', str(src), "-o", str(path)], check=True, timeout=60
    )


@pytest.fixture
def fresh_kernels(tmp_path, monkeypatch):
    """A private user cache and a kernel module that has not built or loaded anything yet."""
    from gated_lpi_exp.attribution import kernels, native_lib

    monkeypatch.setenv("GATED_LPI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kernels, "_state", {"override": None, "warned": set(), "pool": None})
    monkeypatch.setattr(native_lib, "_fallback", {})
    return kernels


def _native_works(kernels) -> bool:
    with kernels.use_kernel("native"):
        return kernels.resolve_kernel("cpu") == "native"


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("g++") is None, reason="needs gcc and g++")
@pytest.mark.parametrize("folder_problem", ["none", "world_writable", "foreign_owner"])
def test_a_planted_kernel_library_is_never_loaded(fresh_kernels, tmp_path, caplog, folder_problem):
    """A library planted at the kernel's path (in a folder others can write, in a folder of another user,
    or in the user's own private folder without this tool's build record) never runs: the kernel is built
    where it is safe and works."""
    kernels = fresh_kernels
    folder = tmp_path / "cache" / "kernels"
    folder.mkdir(parents=True, mode=0o700)
    marker = tmp_path / "planted-code-ran"
    for _, stem in kernels.native_candidates():
        _plant(folder / f"{stem}.so", marker, tmp_path)
    if folder_problem == "world_writable":
        folder.chmod(0o777)
    elif folder_problem == "foreign_owner":
        if os.getuid() != 0:
            pytest.skip("making a folder someone else's needs root")
        os.chown(folder, 65534, 65534)
    with caplog.at_level("WARNING"):
        assert _native_works(kernels)
    assert not marker.exists(), "the planted library's code ran"
    if folder_problem == "none":
        assert "refusing to load" in caplog.text and "no build record" in caplog.text
        stem = kernels.native_candidates()[0][1]
        assert (folder / f"{stem}.sha256").is_file()  # rebuilt in place, with its record
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    else:
        assert f"not loading compiled code from {folder}" in caplog.text and "Fix:" in caplog.text


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("g++") is None, reason="needs gcc and g++")
def test_a_kernel_library_swapped_after_its_build_is_refused_and_rebuilt(fresh_kernels, tmp_path, caplog):
    kernels = fresh_kernels
    assert _native_works(kernels)
    folder = tmp_path / "cache" / "kernels"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    stem = kernels.native_candidates()[0][1]
    marker = tmp_path / "planted-code-ran"
    _plant(folder / f"{stem}.so", marker, tmp_path)  # the record still vouches for the real build
    kernels._state.update({"native:cpu": None, "warned": set()})
    with caplog.at_level("WARNING"):
        assert _native_works(kernels)
    assert not marker.exists(), "the planted library's code ran"
    assert "does not match the build record" in caplog.text


def test_the_native_kernel_is_built_only_through_the_checked_loader():
    source = (PACKAGE / "attribution" / "kernels.py").read_text()
    assert "ctypes.CDLL" not in source  # every load goes through native_lib.load_verified
    assert (PACKAGE / "attribution" / "native_lib.py").read_text().count("ctypes.CDLL(") == 1
