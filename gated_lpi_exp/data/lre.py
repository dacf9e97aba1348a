"""Download the paper's 12 upstream relation files once, verify them, and cache them.

The files are pinned to one commit of ``evandez/relations`` and checked against sha256 digests, so a run on
``relations.source=lre`` always evaluates the same bytes whatever mirror they came from.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from gated_lpi_exp.errors import DataError

log = logging.getLogger(__name__)

LRE_COMMIT = "1b9ec3cf2b8368e42bde7e80fcef384312a6ec07"
"""The upstream snapshot (MIT licence, (c) 2022 Evan Hernandez) the digests below belong to."""

DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/evandez/relations/{LRE_COMMIT}"
URL_ENV_VAR = "GATED_LPI_LRE_URL"
"""Environment variable overriding :data:`DEFAULT_BASE_URL` (a mirror, or a ``file://`` URL)."""

_PINNED = """
data/bias/name_birthplace.json b796df239a577a6bf09d6ad6f1b537a72a7b1a483352090a1586a91f7712584e
data/bias/name_religion.json 49552370e79d2ea17ce0c3e5335af42506ac09d6924618de96be20201b300aed
data/bias/occupation_age.json cc06ab94193e2a0c0a4b0a343ae3b234487cb4893e0377078eee90e3d474f276
data/bias/occupation_gender.json 1b5e02c08ebfcd79225f3e89dd43c859c9e7026beaf5cfc1e5135e053eb10a2f
data/commonsense/fruit_inside_color.json 7986138d585ca5abea5b6821f94b749e17adb027db737618fa7ba44ff2b94c61
data/commonsense/object_superclass.json e594c3288df3059638ae885d83f2934266bb1968932272c027786bf7b3c02678
data/commonsense/work_location.json 2438376757f35fc80e8925070e855c190f42693f04e6305266cdc2b76e9878c1
data/factual/country_capital_city.json 9945d2da1fa1145c1d7e59ac61a25ebee74299c00bd53fc9308167f9e1d44fc0
data/factual/country_language.json 0996525735107934f0d2e467e6fac7d2c785c42e8300ccb41ae6e9b5dfde2b76
data/linguistic/adj_antonym.json bcfe2e8ed0cabe0650499a1aa64df908aed94898192efc112a0b082dc49b32dd
data/linguistic/word_first_letter.json b084acead4479f7305891074f4b53fc8b21f0ad6d31e44c992b5a72d75f9d467
data/linguistic/word_last_letter.json a9ffb875a35323fe6151ed132186057c5c060e461aa119dc41ef50dc52fe5068
"""

LRE_SHA256: dict[str, str] = dict(line.split() for line in _PINNED.strip().splitlines())
"""Upstream path -> sha256 of the file at :data:`LRE_COMMIT`."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gated_lpi_exp/lre/<commit>`` (``~/.cache`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gated_lpi_exp" / "lre" / LRE_COMMIT


def fetch_lre(
    cache_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    *,
    expected_sha256: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[Path, list[Path]]:
    """Make sure every pinned file is in the cache and intact, downloading the missing ones.

    Args:
        cache_dir: Where to keep the files (default :func:`default_cache_dir`).
        base_url: Download from ``{base_url}/{path}``; default ``$GATED_LPI_LRE_URL``, else
            :data:`DEFAULT_BASE_URL`.
        expected_sha256: Upstream path -> sha256 of the files to fetch (default :data:`LRE_SHA256`).
        timeout: Seconds to wait for the server per request.

    Returns:
        The cache root (holding ``data/<category>/...``) and the cached files, in table order.

    Raises:
        DataError: The server cannot be reached, or a downloaded file does not match its digest.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    base = (base_url or os.environ.get(URL_ENV_VAR) or DEFAULT_BASE_URL).rstrip("/")
    table = LRE_SHA256 if expected_sha256 is None else expected_sha256
    return root, [_ensure_file(root, path, digest, base, timeout) for path, digest in table.items()]


def _ensure_file(root: Path, path: str, digest: str, base: str, timeout: float) -> Path:
    target = root / path
    if target.is_file():
        actual = _sha256(target.read_bytes())
        if actual == digest:
            return target
        # A cache entry can only be wrong if it was edited or truncated: fetch it afresh rather than fail.
        log.warning("cached %s has sha256 %s, expected %s; downloading it again", target, actual, digest)
        target.unlink()
    url = f"{base}/{path}"
    data = _download(url, path, timeout)
    actual = _sha256(data)
    if actual != digest:
        raise DataError(
            f"upstream relation file {path} downloaded from {url} has sha256 {actual}, expected {digest}; "
            f"the file was not kept in {root}. The server does not serve the pinned snapshot {LRE_COMMIT}: "
            f"check {URL_ENV_VAR} / base_url, or point relations.source at a local copy of that commit"
        )
    _write_atomic(target, data)
    log.info("downloaded %s to %s", url, target)
    return target


def _download(url: str, path: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as err:
        raise _unreachable(url, path, f"HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _unreachable(url, path, str(getattr(err, "reason", err))) from err


def _unreachable(url: str, path: str, reason: str) -> DataError:
    return DataError(
        f"could not reach the upstream relations repository to fetch {path} from {url} ({reason}). "
        "Use a local copy instead: clone https://github.com/evandez/relations (commit "
        f"{LRE_COMMIT}) and set relations.source=/path/to/relations/data, or use the bundled data with "
        f"relations.source=bundled; {URL_ENV_VAR} sets another download URL"
    )


def _write_atomic(target: Path, data: bytes) -> None:
    # Readers (possibly other processes) see either no file or the whole verified file, never a partial one.
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
