"""The hub path against a real hub protocol server on loopback, through the ordinary ``huggingface_hub``
client: branch listing with commits, downloads pinned to them, retries, resume, hash checks, the bounded
prefetch and the eviction of only what this tool fetched."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hub_helpers import (
    REPO,
    blob_names,
    checkpoint_bytes,
    repo_folder,
    settings_for,
    weights_etag,
)
from huggingface_hub import HfApi, hf_hub_download, scan_cache_dir
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from scale_helpers import make_series

from gated_lpi_exp.checkpoints.download import Downloader
from gated_lpi_exp.checkpoints.hub import HubSettings, list_hub_checkpoints
from gated_lpi_exp.checkpoints.prefetch import CheckpointFeed, small_files
from gated_lpi_exp.errors import CheckpointError
from gated_lpi_exp.testing.disk import DiskSampler
from gated_lpi_exp.testing.hub_repo import HubRepository
from gated_lpi_exp.testing.hub_server import HubServer

STEPS = [0, 10, 20, 30, 40, 50]


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    return make_series(tmp_path_factory.mktemp("hub") / "series", STEPS)


@pytest.fixture(scope="module")
def repo(series):
    return HubRepository.from_series(REPO, series)


@pytest.fixture
def server(repo):
    with HubServer(repo) as srv:
        yield srv


def _downloader(server, cache, **kwargs) -> Downloader:
    return Downloader(settings_for(server.url, cache), backoff_s=0.01, **kwargs)


def _assert_cache_is_consistent(cache):
    """The client's own cache scanner finds no broken link, missing snapshot or dangling ref."""
    report = scan_cache_dir(cache)
    assert not report.warnings, report.warnings


def test_the_server_answers_the_ordinary_client_as_the_hub_does(server, repo, series, tmp_path):
    api = HfApi(endpoint=server.url)
    branches = {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches}
    assert set(branches) == {f"step{s}-tokens0B" for s in STEPS} | {"main"}
    info = api.model_info(REPO, revision="step10-tokens0B", files_metadata=True)
    assert info.sha == branches["step10-tokens0B"]
    weights = next(s for s in info.siblings if s.rfilename == "model.safetensors")
    content = (series / "step10" / "model.safetensors").read_bytes()
    assert weights.lfs.sha256 == hashlib.sha256(content).hexdigest() and weights.size == len(content)
    config = next(s for s in info.siblings if s.rfilename == "config.json")
    raw = (series / "step10" / "config.json").read_bytes()
    assert config.blob_id == hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()

    path = hf_hub_download(
        REPO, "model.safetensors", revision="step10-tokens0B", cache_dir=tmp_path, endpoint=server.url
    )
    assert Path(path).read_bytes() == content
    assert f"/snapshots/{info.sha}/" in path  # resolved to the branch's commit
    assert (repo_folder(tmp_path) / "refs" / "step10-tokens0B").read_text() == info.sha
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(
            REPO, "model.safetensors.index.json", revision=info.sha, cache_dir=tmp_path, endpoint=server.url
        )
    assert (repo_folder(tmp_path) / ".no_exist" / info.sha / "model.safetensors.index.json").exists()
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="step99-tokens0B")
    with pytest.raises(RepositoryNotFoundError):
        api.list_repo_refs("org/absent")


def test_listing_records_the_commit_each_branch_points_at(server, repo, tmp_path):
    checkpoints = list_hub_checkpoints(REPO, settings=settings_for(server.url, tmp_path))
    assert [c.step for c in checkpoints] == STEPS
    assert [c.commit for c in checkpoints] == [repo.revisions[f"step{s}-tokens0B"].commit for s in STEPS]


def test_hub_settings_read_the_standard_variables_when_used(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert HubSettings.from_env() == HubSettings("http://127.0.0.1:9", tmp_path, True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not HubSettings.from_env().offline


def test_a_feed_holds_at_most_prefetch_plus_one_checkpoints_and_leaves_nothing_it_fetched(
    server, repo, tmp_path
):
    server.set_rate(400e3)  # about half a second per checkpoint
    cache = tmp_path / "cache"
    checkpoints = list_hub_checkpoints(REPO, settings=settings_for(server.url, cache))
    feed = CheckpointFeed(checkpoints, "none", 1, _downloader(server, cache))
    with DiskSampler(repo_folder(cache)) as disk, feed:
        for ckpt in checkpoints:
            path = feed.path(ckpt)
            assert (tmp_path / path / "model.safetensors").read_bytes() == (
                repo.revisions[ckpt.revision].files["model.safetensors"].source.read_bytes()
            )
            time.sleep(0.3)  # "compute"
            feed.done(ckpt)
    assert 0 < disk.peak <= 2 * checkpoint_bytes(repo), (disk.peak, checkpoint_bytes(repo))
    assert feed.stats.disk_peak_bytes <= 2 * checkpoint_bytes(repo)
    assert blob_names(cache) == set() and feed.stats.evicted_bytes == feed.stats.downloaded_bytes > 0
    assert not list((repo_folder(cache) / "snapshots").iterdir())
    _assert_cache_is_consistent(cache)


@pytest.mark.parametrize("ahead", [0, 1])
def test_the_next_checkpoint_downloads_while_one_is_used_only_when_prefetch_allows(
    server, repo, tmp_path, ahead
):
    cache = tmp_path / "cache"
    checkpoints = list_hub_checkpoints(REPO, settings=settings_for(server.url, cache))[:3]
    feed = CheckpointFeed(checkpoints, "none", ahead, _downloader(server, cache))
    with feed:
        for i, ckpt in enumerate(checkpoints):
            feed.path(ckpt)
            if i + 1 < len(checkpoints):
                following = weights_etag(repo, checkpoints[i + 1].revision)
                deadline = time.time() + (10 if ahead else 0.5)
                while not server.downloads(following) and time.time() < deadline:
                    time.sleep(0.01)
                assert bool(server.downloads(following)) == bool(ahead)
            feed.done(ckpt)


def test_a_branch_the_user_already_had_is_never_evicted(server, repo, tmp_path):
    cache = tmp_path / "cache"
    had = "step20-tokens0B"
    for name in repo.revisions[had].files:  # the user's own download of one branch
        hf_hub_download(REPO, name, revision=had, cache_dir=cache, endpoint=server.url)
    before = {p.name: p.stat().st_mtime_ns for p in (repo_folder(cache) / "blobs").iterdir()}
    served = len(server.downloads(weights_etag(repo, had)))
    checkpoints = list_hub_checkpoints(REPO, settings=settings_for(server.url, cache))
    with CheckpointFeed(checkpoints, "none", 1, _downloader(server, cache)) as feed:
        for ckpt in checkpoints:
            feed.path(ckpt)
            feed.done(ckpt)
    after = {p.name: p.stat().st_mtime_ns for p in (repo_folder(cache) / "blobs").iterdir()}
    assert after == before  # the user's blobs, shared ones included, untouched; everything fetched is gone
    snapshot = repo_folder(cache) / "snapshots" / repo.revisions[had].commit
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(repo.revisions[had].files)
    assert (repo_folder(cache) / "refs" / had).read_text() == repo.revisions[had].commit
    assert len(server.downloads(weights_etag(repo, had))) == served  # not downloaded again
    _assert_cache_is_consistent(cache)


def test_keep_all_leaves_every_branch_usable_offline(server, repo, tmp_path):
    cache = tmp_path / "cache"
    checkpoints = list_hub_checkpoints(REPO, settings=settings_for(server.url, cache))
    with CheckpointFeed(checkpoints, "all", 1, _downloader(server, cache)) as feed:
        for ckpt in checkpoints:
            feed.path(ckpt)
            feed.done(ckpt)
    server.stop()  # no hub at all now
    offline = settings_for(server.url, cache, offline=True)
    cached = list_hub_checkpoints(REPO, settings=offline)
    assert [(c.step, c.commit) for c in cached] == [(c.step, c.commit) for c in checkpoints]
    paths = []
    with CheckpointFeed(cached, "none", 1, Downloader(offline)) as feed:
        for c in cached:
            paths.append(feed.path(c))
            feed.done(c)
    assert all((tmp_path / p / "model.safetensors").is_file() for p in paths)  # offline: nothing evicted
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE.*Fix"):
        list_hub_checkpoints("org/never-downloaded", settings=offline)
    _assert_cache_is_consistent(cache)


def test_content_that_does_not_match_its_advertised_hash_fails_that_checkpoint_clearly(
    server, repo, tmp_path
):
    cache = tmp_path / "cache"
    checkpoints = list_hub_checkpoints(REPO, settings=settings_for(server.url, cache))
    bad = checkpoints[1]
    server.faults.corrupt.add(weights_etag(repo, bad.revision))
    downloader = _downloader(server, cache, retries=1)
    with pytest.raises(CheckpointError, match=r"step 10.*sha256.*does not match the hash it advertises"):
        downloader.fetch(bad)
    assert len(server.downloads(weights_etag(repo, bad.revision))) == 2  # tried, and retried once
    assert weights_etag(repo, bad.revision) not in blob_names(cache)  # the damaged copy is not kept
    assert downloader.fetch(checkpoints[0]).bytes > 0  # the other checkpoints are unaffected


def test_a_failed_transfer_is_retried(server, repo, tmp_path):
    cache = tmp_path / "cache"
    first = list_hub_checkpoints(REPO, settings=settings_for(server.url, cache))[0]
    failing = weights_etag(repo, first.revision)
    server.faults.fail[failing] = 2
    _downloader(server, cache, retries=3).fetch(first)
    assert [s.status for s in server.log if s.etag == failing and s.method == "GET"] == [500, 500, 200]
    assert failing in blob_names(cache)


def test_a_dropped_connection_is_resumed_with_a_range_request(tmp_path):
    """The client keeps what it has written (it writes in 10 MiB blocks), so the file is 24 MiB."""
    folder = tmp_path / "big" / "step0"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    weights.write_bytes(np.random.default_rng(0).bytes(24 * 2**20))
    big = HubRepository.from_series("org/big", folder.parent)
    etag = big.revisions["step0-tokens0B"].files["model.safetensors"].sha256
    with HubServer(big) as server:
        server.faults.drop_after[etag] = 15 * 2**20
        cache = tmp_path / "cache"
        (ckpt,) = list_hub_checkpoints("org/big", settings=settings_for(server.url, cache))
        fetched = _downloader(server, cache).fetch(ckpt)
        starts = [p.start for p in server.downloads(etag)]
        assert len(starts) == 2 and starts[0] == 0 < starts[1]  # resumed, not restarted
        assert server.bytes_served(etag) < 2 * weights.stat().st_size
    assert (fetched.path / "model.safetensors").read_bytes() == weights.read_bytes()


def test_a_partial_file_left_by_a_killed_process_is_completed_not_downloaded_again(server, repo, tmp_path):
    cache = tmp_path / "cache"
    ckpt = list_hub_checkpoints(REPO, settings=settings_for(server.url, cache))[2]
    weights = repo.revisions[ckpt.revision].files["model.safetensors"]
    blobs = repo_folder(cache) / "blobs"
    blobs.mkdir(parents=True)
    half = weights.size // 2
    (blobs / f"{weights.sha256}.0a1b2c3d.incomplete").write_bytes(weights.source.read_bytes()[:half])
    fetched = _downloader(server, cache).fetch(ckpt)
    assert [p.start for p in server.downloads(weights.sha256)] == [half]
    assert server.bytes_served(weights.sha256) == weights.size - half
    assert (fetched.path / "model.safetensors").read_bytes() == weights.source.read_bytes()
    assert not list(blobs.glob("*.incomplete"))


def test_files_left_by_a_killed_run_are_reused_when_needed_and_evicted_when_not(server, repo, tmp_path):
    cache = tmp_path / "cache"
    checkpoints = list_hub_checkpoints(REPO, settings=settings_for(server.url, cache))
    killed = _downloader(server, cache)
    for ckpt in checkpoints[:2]:
        killed.fetch(ckpt)
    _as_if_killed(killed.ledger(REPO).path)
    served = {c.step: len(server.downloads(weights_etag(repo, c.revision))) for c in checkpoints[:2]}

    with CheckpointFeed(checkpoints[1:], "none", 1, _downloader(server, cache)) as feed:  # step 0: finished
        assert weights_etag(repo, checkpoints[0].revision) not in blob_names(cache)  # evicted at the start
        for ckpt in checkpoints[1:]:
            feed.path(ckpt)
            feed.done(ckpt)
    assert len(server.downloads(weights_etag(repo, checkpoints[1].revision))) == served[10]  # reused
    assert blob_names(cache) == set()
    _assert_cache_is_consistent(cache)


def test_a_resumed_run_keeps_the_small_files_a_killed_run_left_for_its_next_checkpoint(
    server, repo, tmp_path
):
    """The order of a resumed run: the tokenizer files of the (finished) first checkpoint are fetched and
    released before the walk takes over the killed run's in-flight checkpoint, which shares them."""
    cache = tmp_path / "cache"
    settings = settings_for(server.url, cache)
    checkpoints = list_hub_checkpoints(REPO, settings=settings)
    files = repo.revisions[checkpoints[1].revision].files.values()
    small = {f.etag for f in files if not f.is_lfs}
    killed = _downloader(server, cache)
    killed.fetch(checkpoints[0])
    # The next checkpoint's download has started (it registered its files, none linked yet) when the finished
    # one is evicted: the small files they share stay, unlinked. Then the run is killed.
    killed.ledger(REPO).acquire(str(checkpoints[1].commit), [f.etag for f in files])
    killed.ledger(REPO).release(str(checkpoints[0].commit), evict=True)
    _as_if_killed(killed.ledger(REPO).path)
    assert small and small <= blob_names(cache)
    served = {etag: len(server.downloads(etag)) for etag in small}

    with small_files(checkpoints[0], keep="none", retries=0, settings=settings) as folder:
        assert (Path(folder) / "config.json").is_file()
    assert small <= blob_names(cache)  # still needed by the killed run's checkpoint
    with CheckpointFeed(checkpoints[1:2], "none", 1, _downloader(server, cache)) as feed:
        feed.path(checkpoints[1])
        feed.done(checkpoints[1])
    assert {etag: len(server.downloads(etag)) for etag in small} == served
    assert blob_names(cache) == set()
    _assert_cache_is_consistent(cache)


def _as_if_killed(ledger_path):
    """Make the ledger's users a process that has exited, as a SIGKILLed run leaves them."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    doc = json.loads(ledger_path.read_text())
    for entry in doc["commits"].values():
        entry["users"] = [f"{socket.gethostname()}:{int(gone.stdout)}"]
    ledger_path.write_text(json.dumps(doc))


def test_a_walk_that_stops_early_keeps_its_prefetched_files_for_the_rerun(server, repo, tmp_path):
    cache = tmp_path / "cache"
    checkpoints = list_hub_checkpoints(REPO, settings=settings_for(server.url, cache))
    with (
        pytest.raises(RuntimeError, match="compute failed"),
        CheckpointFeed(checkpoints, "none", 1, _downloader(server, cache)) as feed,
    ):
        feed.path(checkpoints[0])
        feed.done(checkpoints[0])
        feed.path(checkpoints[1])
        raise RuntimeError("compute failed")
    kept = blob_names(cache)
    assert weights_etag(repo, checkpoints[1].revision) in kept
    assert all(weights_etag(repo, c.revision) not in kept for c in checkpoints[3:])
    users = [e["users"] for e in _downloader(server, cache).ledger(REPO).read()["commits"].values()]
    assert users and all(u == [] for u in users)  # disowned: the next run adopts them
