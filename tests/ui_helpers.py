"""A real ``mlflow server`` on a free loopback port, and its REST API as the UI calls it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gated_lpi_exp.tracking.tracker import server_reachable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(store: str, cwd: Path, timeout: float = 120) -> Iterator[str]:
    """Serve ``store`` (a tracking URI) on 127.0.0.1 with one worker and no background job runner; yield its
    URL; stop it and everything it started afterwards."""
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", store, "--workers", "1"]
    server = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while not server_reachable(url, timeout=1.0):
            assert server.poll() is None, "mlflow server exited"
            assert time.time() < deadline, f"mlflow server did not come up in {timeout} s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker: its own process group
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def api(url: str, route: str, body: dict | None = None, **query: str):
    """Call the REST API the UI uses (``/ajax-api/2.0/mlflow/...``): POST ``body`` as JSON, or GET."""
    full = f"{url}/ajax-api/2.0/mlflow/{route}"
    if query:
        full += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(full, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())


def artifact(url: str, run_id: str, path: str) -> bytes:
    """An artifact's bytes as the UI's preview fetches them."""
    query = urllib.parse.urlencode({"run_id": run_id, "path": path})
    with urllib.request.urlopen(f"{url}/get-artifact?{query}", timeout=60) as resp:
        return resp.read()
