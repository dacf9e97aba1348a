"""Security: no pickle loads, safetensors only, no remote code unless asked for, servers on localhost."""

from __future__ import annotations

import ast
import re
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
