"""The paper's released code at a pinned commit (hash-verified), and a transformers 4.46.3 venv to run it in.

Nothing of the released code is stored in this repository: it is read at run time from a local checkout
(``GATED_LPI_RELEASED_CODE``: a folder with the files, or a git repository that holds the pinned commit) or
downloaded from GitHub at the pinned commit, and each file is checked against its sha256 before use. The
files are copied into a private working folder first, so what runs is exactly what was verified.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import torch

from gated_lpi_exp.storage.arrays import default_cache_dir

REPOSITORY = "AlecMaxPro/MoE-Neuron"
COMMIT = "712b7fc74819ecc593f195e021f5b9cd7eeda446"
"""The released code's commit ("Update Readme", 2026-02-08; its code files are those of the initial release)."""
FILES = {
    "OLMoE_view_knowledge.ipynb": "e85f3cdf49b495e79b9f28601b72df02376fe2e4b9f37b39b5b3ab6c6dd9405b",
    "OLMo_view_knowledge.ipynb": "e09899ea944b62557e78d3bfb2a1c49ec8d3e4de65cdf469f24137afaa07c2b3",
    "modeling_olmoe.py": "46b5c4bc0361dc7e9c47318a2bd47e86ff34510de477c6a2c08e275b009bd771",
    "modeling_olmo.py": "fce3095178b96cfbe808ac3706cf6d697d7a59c3c93ed30a49e4fe6570f94441",
}
"""sha256 of every file the cross-check runs, at :data:`COMMIT`."""
ENV_VAR = "GATED_LPI_RELEASED_CODE"
TRANSFORMERS = "4.46.3"
"""The transformers release the patched modeling files were written for."""
PINNED = (
    "tokenizers==0.20.3",
    "huggingface_hub==0.36.2",
    "safetensors==0.8.0",
    "numpy==2.4.6",
    "matplotlib==3.11.2",
)
"""The rest of the venv, as in the last run that passed (the notebooks also import matplotlib and draw, headless)."""


class Unavailable(Exception):
    """The released code or its environment cannot be obtained here; the check is skipped, with this reason."""


def obtain_released_code(dest: Path) -> Path:
    """Copy the pinned, verified files into ``dest`` and return it.

    Raises:
        Unavailable: No local checkout is named and GitHub cannot be reached.
        RuntimeError: A file's hash differs from the pinned one (a different commit, or modified files).
    """
    dest.mkdir(parents=True, exist_ok=True)
    local = os.environ.get(ENV_VAR)
    for name, digest in FILES.items():
        data = _read_local(Path(local).expanduser(), name) if local else _download(name)
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            where = local or f"github.com/{REPOSITORY}@{COMMIT}"
            raise RuntimeError(
                f"{name} from {where} has sha256 {actual}, not the pinned {digest}. Fix: point {ENV_VAR} at a "
                f"checkout of {REPOSITORY} at commit {COMMIT} (git checkout {COMMIT})."
            )
        (dest / name).write_bytes(data)
    return dest


def _read_local(root: Path, name: str) -> bytes:
    if (root / name).is_file():
        return (root / name).read_bytes()
    if (root / "HEAD").is_file() or (root / ".git").exists():  # a git repository, bare or not
        done = subprocess.run(
            ["git", "-C", str(root), "show", f"{COMMIT}:{name}"], capture_output=True, timeout=60
        )
        if done.returncode == 0:
            return done.stdout
        raise RuntimeError(
            f"{ENV_VAR}={root} is a git repository without {COMMIT}:{name} "
            f"({done.stderr.decode(errors='replace').strip()}). Fix: git -C {root} fetch origin {COMMIT}."
        )
    raise RuntimeError(f"{ENV_VAR}={root} has no {name}. Fix: point it at a checkout of {REPOSITORY}.")


def _download(name: str) -> bytes:
    url = f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}/{name}"
    try:
        with urllib.request.urlopen(url, timeout=20) as response:  # noqa: S310 - fixed https URL
            return response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise Unavailable(
            f"the paper's released code is not available: {ENV_VAR} is unset and {url} cannot be fetched "
            f"({exc}). Set {ENV_VAR} to a checkout of github.com/{REPOSITORY} at {COMMIT}."
        ) from exc


def legacy_python(root: Path | None = None) -> Path:
    """The interpreter of a private venv with transformers 4.46.3, this torch and matplotlib (built once).

    Raises:
        Unavailable: The venv cannot be created or the packages cannot be installed.
        RuntimeError: The venv exists but others can write to it (it would run their code).
    """
    torch_version = torch.__version__.split("+")[0]
    packages = [f"transformers=={TRANSFORMERS}", f"torch=={torch_version}", *PINNED]
    root = root or default_cache_dir() / "released_code"
    tag = hashlib.sha256(" ".join(packages).encode()).hexdigest()[:8]
    venv = root / f"venv-transformers{TRANSFORMERS}-torch{torch_version}-{tag}"
    python = venv / "bin" / "python"
    if (venv / ".complete").is_file():
        _check_private(venv)
        return python
    root.mkdir(parents=True, exist_ok=True)
    if venv.exists():
        shutil.rmtree(venv)  # an interrupted build
    old = os.umask(0o077)
    try:
        _run([sys.executable, "-m", "venv", str(venv)], "create the venv")
        _run([str(python), "-m", "pip", "install", "-q", *packages], f"pip install {' '.join(packages)}")
    finally:
        os.umask(old)
    (venv / ".complete").write_text(" ".join(packages) + "\n")
    _check_private(venv)
    return python


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise Unavailable(f"could not {what}: {done.stderr.strip()[-800:]}")


def _check_private(venv: Path) -> None:
    info = venv.stat()
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RuntimeError(
            f"{venv} is writable by other users or not yours; refusing to run code from it. Fix: delete it."
        )
