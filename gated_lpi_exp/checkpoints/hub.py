"""The model hub, through the ordinary ``huggingface_hub`` client: where it is, which branches a series has
(with the commit each one points at), and which files a revision holds.

Where the hub and its cache are comes from the standard variables, read when they are used (the client reads
them once, when it is imported, so a variable set later, e.g. by a test or a benchmark that starts its own
server, would otherwise be missed): ``HF_ENDPOINT`` (default ``https://huggingface.co``), ``HF_HUB_CACHE`` /
``HF_HOME`` (default ``~/.cache/huggingface/hub``) and ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``): offline,
branches and files come from the local cache only, and nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from gated_lpi_exp.checkpoints.resolve import Checkpoint, parse_branches
from gated_lpi_exp.config import DEFAULT_BRANCHES
from gated_lpi_exp.errors import CheckpointError

log = logging.getLogger(__name__)

COMMIT = re.compile(r"^[0-9a-f]{40}$")
"""A full commit id."""
WANTED_FILES = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken")
"""What a checkpoint needs (config, safetensors weights, tokenizer). Pickle weights are never downloaded."""
REMOTE_CODE_FILES = ("*.py",)
"""Added when ``model.trust_remote_code`` is set."""


@dataclass(frozen=True)
class HubSettings:
    """Where the hub and its local cache are, and whether to use the network at all."""

    endpoint: str
    cache_dir: Path
    offline: bool

    @classmethod
    def from_env(cls) -> HubSettings:
        """The standard variables as they are now (``huggingface_hub``'s import-time values as fallback)."""
        from huggingface_hub import constants

        endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
        if os.environ.get("HF_HUB_CACHE"):
            cache = os.environ["HF_HUB_CACHE"]
        elif os.environ.get("HF_HOME"):
            cache = os.path.join(os.environ["HF_HOME"], "hub")
        else:
            cache = constants.HF_HUB_CACHE
        flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
        offline = flag.strip().upper() in ("1", "ON", "YES", "TRUE") if flag else constants.HF_HUB_OFFLINE
        return cls(endpoint.rstrip("/"), Path(os.path.expanduser(os.path.expandvars(cache))), offline)

    def repo_folder(self, repo_id: str) -> Path:
        """The repository's folder in the cache (``models--org--name``)."""
        return self.cache_dir / ("models--" + repo_id.replace("/", "--"))


@dataclass(frozen=True)
class RemoteFile:
    """One file of a hub revision."""

    name: str
    size: int
    etag: str
    """sha256 of the content for LFS files, the git blob id otherwise (the cache's blob name)."""
    lfs: bool


def list_hub_checkpoints(
    repo_id: str,
    pattern: str = DEFAULT_BRANCHES,
    tokens_per_step: int | None = None,
    settings: HubSettings | None = None,
) -> list[Checkpoint]:
    """A repository's checkpoint branches (those matching the series' ``pattern``, see
    :func:`~gated_lpi_exp.checkpoints.resolve.parse_branches`), each with the commit it points at; offline,
    those complete in the cache.

    Raises:
        CheckpointError: the hub cannot be reached, or no branch (offline: no cached branch) matches.
    """
    settings = settings or HubSettings.from_env()
    if settings.offline:
        return cached_checkpoints(repo_id, settings, pattern, tokens_per_step)
    from huggingface_hub import HfApi

    try:
        refs = HfApi(endpoint=settings.endpoint).list_repo_refs(repo_id)
    except Exception as exc:  # offline, unknown repo, auth: all end the same way for the user
        raise CheckpointError(
            f"Could not list the branches of {repo_id!r} on the model hub {settings.endpoint} "
            f"({type(exc).__name__}: {exc}). Fix: check the network, HF_ENDPOINT and the repository id; with "
            "the checkpoints already in the local cache set HF_HUB_OFFLINE=1; or download them and use "
            "model.kind=local model.source=/path/to/series."
        ) from exc
    heads = {b.name: b.target_commit for b in refs.branches}
    checkpoints = parse_branches(repo_id, heads, pattern, tokens_per_step)
    if not checkpoints:
        shown = ", ".join(sorted(heads)[:8]) + (", ..." if len(heads) > 8 else "")
        raise CheckpointError(
            f"No branch of {repo_id!r} matches model.branch_pattern={pattern!r} (branches: {shown}). "
            "Fix: set model.branch_pattern to this series' naming, with a (?P<step>...) group."
        )
    return checkpoints


def cached_checkpoints(
    repo_id: str, settings: HubSettings, pattern: str = DEFAULT_BRANCHES, tokens_per_step: int | None = None
) -> list[Checkpoint]:
    """Step branches whose files are complete in the local cache (``refs/<branch>`` -> ``snapshots/<commit>``).

    Raises:
        CheckpointError: no complete step branch is cached.
    """
    folder = settings.repo_folder(repo_id)
    refs = folder / "refs"
    heads = {p.name: p.read_text().strip() for p in refs.iterdir() if p.is_file()} if refs.is_dir() else {}
    complete = {name: sha for name, sha in heads.items() if snapshot_complete(folder / "snapshots" / sha)}
    checkpoints = parse_branches(repo_id, complete, pattern, tokens_per_step)
    if not checkpoints:
        raise CheckpointError(
            f"HF_HUB_OFFLINE is set, but the hub cache {settings.cache_dir} holds no complete checkpoint branch of "
            f"{repo_id!r}. Fix: unset HF_HUB_OFFLINE to download them, or point HF_HUB_CACHE at the cache "
            "that holds them."
        )
    log.info("offline: %d step branches of %s from the cache %s", len(checkpoints), repo_id, folder)
    return checkpoints


def snapshot_complete(snapshot: Path) -> bool:
    """A cached revision with a config and all its safetensors weights (every shard its index lists)."""
    if not (snapshot / "config.json").is_file():
        return False
    index = snapshot / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError):
            return False
        return all((snapshot / shard).is_file() for shard in shards)
    return (snapshot / "model.safetensors").is_file()


def wanted(name: str, trust_remote_code: bool = False) -> bool:
    """Whether a checkpoint needs this file of its revision."""
    patterns = WANTED_FILES + (REMOTE_CODE_FILES if trust_remote_code else ())
    return any(fnmatch(name, p) for p in patterns)


def revision_files(
    checkpoint: Checkpoint, settings: HubSettings, trust_remote_code: bool = False
) -> list[RemoteFile]:
    """The files a checkpoint needs from its commit, with their sizes and content hashes.

    Raises:
        CheckpointError: the revision has no safetensors weights.
        huggingface_hub.errors.HfHubHTTPError: the listing failed (the downloader retries what may pass).
    """
    from huggingface_hub import HfApi

    revision = checkpoint.commit or checkpoint.revision
    info = HfApi(endpoint=settings.endpoint).model_info(
        checkpoint.source, revision=revision, files_metadata=True
    )
    files = []
    for s in info.siblings or []:
        if wanted(s.rfilename, trust_remote_code) and s.size is not None:
            etag = s.lfs.sha256 if s.lfs else s.blob_id
            files.append(RemoteFile(s.rfilename, s.size, str(etag), s.lfs is not None))
    if not any(f.name.endswith(".safetensors") for f in files):
        raise CheckpointError(
            f"{checkpoint.source}@{checkpoint.label} has no safetensors weights; this tool loads safetensors "
            "only (unpickling can run arbitrary code). Fix: choose a revision with *.safetensors files."
        )
    return files
