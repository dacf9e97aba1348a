"""An independent measure of the disk a run holds: the bytes under a folder, sampled in a thread."""

from __future__ import annotations

import os
import threading
from pathlib import Path


class DiskSampler:
    """Samples the bytes under a folder (partial files included) every ``interval`` seconds in a thread; an
    independent measure of the disk a run holds, computed without the project's own accounting."""

    def __init__(self, folder: Path, interval: float = 0.005):
        self.folder = folder
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _size(self) -> int:
        total = 0
        for dirpath, _, names in os.walk(self.folder):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    if not os.path.islink(path):
                        total += os.stat(path).st_size
                except FileNotFoundError:
                    pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._size())
            self._stop.wait(self.interval)

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._size())
