"""What a person sees in the terminal: the results table, progress bars and log lines that never collide (on a
real pseudo-terminal), one log format, the log file, and ``--help``."""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
import threading

import pandas as pd
import pytest
from scale_helpers import CLI, cli_env, make_series, overrides

from gated_lpi_exp.compose import compose_run_config
from gated_lpi_exp.console import results_table
from gated_lpi_exp.schemas import AblationResult, DynamicsSummary, HitSummary

LOG_LINE = re.compile(r"^(\x1b\[[0-9;]*[A-Za-z])*\d\d:\d\d:\d\d (INFO|WARNING|ERROR) [\w.]+: ")
"""A log record as the console shows it, after at most some cursor codes that clear a progress bar."""


def _tables() -> dict[str, pd.DataFrame]:
    hits = [
        dict(step=s, scope="overall", group="all", k=k, hit=h, n=100)
        for s, by_k in ((0, {1: 0.0, 10: 0.1}), (100, {1: 0.2, 10: 0.4}))
        for k, h in by_k.items()
    ]
    summary = [
        dict(metric=m, unit=u, window="all", value=v, n_checkpoints=2)
        for m, v in (("j_stab", 0.25), ("r_t", 0.5), ("rho_avg", 0.9), ("sigma_rel", 1.5))
        for u in ("ffn", "attn")
    ]
    ablation = []
    for step, base in ((0, 0.2), (100, 0.8)):  # step 0: base below the threshold, left out of the drops
        common = dict(step=step, ablation="top10_heads", n_units=10, heldout=False)
        ablation.append(dict(common, condition="base", seed=-1, hit_at_10=base, drop_percent=0.0))
        ablation.append(dict(common, condition="targeted", seed=-1, hit_at_10=base / 2, drop_percent=50.0))
        for seed, drop in ((0, 10.0), (1, 20.0)):
            hit = base * (1 - drop / 100)
            ablation.append(dict(common, condition="random", seed=seed, hit_at_10=hit, drop_percent=drop))
    return {
        "hit_summary": HitSummary.check(pd.DataFrame(hits)),
        "dynamics_summary": DynamicsSummary.check(pd.DataFrame(summary)),
        "ablation": AblationResult.check(pd.DataFrame(ablation)),
    }


def _cells(text: str, first: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(f"| {first}"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_the_results_table_shows_hits_first_and_last_dynamics_and_drops():
    text = results_table(compose_run_config([]), _tables())
    # HIT@10 at step 100: 40% of 100 examples, binomial s.e. sqrt(0.4 * 0.6 / 100) = 4.9%.
    assert _cells(text, "HIT@10") == ["HIT@10", "10.0% ± 3.0%", "40.0% ± 4.9%"]
    assert "step 0" in text and "step 100" in text and "n=100" in text
    assert _cells(text, "J_stab")[1:] == ["25.0%", "25.0%"] and _cells(text, "σ_rel")[1:] == ["1.50", "1.50"]
    # Drops over step 100 only: targeted 50%; random seeds 10% and 20%: 15.0% ± 7.1% (sample sd).
    assert _cells(text, "top10_heads") == ["top10_heads", "50.0%", "15.0% ± 7.1%", "1 of 2"]


def _run_on_a_terminal(args: list[str], cwd) -> tuple[str, str, int]:
    """Run the command line with stderr on a pseudo-terminal (so progress bars are drawn, as for a person)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 x 120: room for bars
    proc = subprocess.Popen([*CLI, *args], cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the terminal closed: the process ended
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    stdout, _ = proc.communicate(timeout=300)
    reader.join(timeout=30)
    os.close(master)
    return stdout.decode(), b"".join(chunks).decode(errors="replace"), proc.returncode


@pytest.mark.slow
def test_bars_and_log_lines_never_collide_on_a_terminal_and_the_log_file_is_clean(tmp_path):
    series = make_series(tmp_path / "series", steps=[0, 10, 20])
    out = tmp_path / "out"
    args = overrides(series, tmp_path, "ablation=top1_head", "progress=true", f"hydra.run.dir={out}")
    stdout, terminal, code = _run_on_a_terminal(args, tmp_path)
    assert code == 0, terminal[-3000:]
    assert "checkpoints:" in terminal and "%|" in terminal  # bars were drawn
    records = [s for s in re.split(r"[\r\n]", terminal) if re.search(r" (INFO|WARNING|ERROR) ", s)]
    assert records and [s for s in records if not LOG_LINE.match(s)] == []
    log_file = (out / "gated_lpi_exp.log").read_text()
    assert "INFO gated_lpi_exp.run: data:" in log_file and "\x1b" not in log_file and "\r" not in log_file
    assert _cells(stdout, "HIT@10")[0] == "HIT@10" and "| ablation: HIT@10 drop" in stdout
    assert re.search(r"MLflow run [0-9a-f]{32}: mlflow ui --backend-store-uri sqlite:///", stdout)
    assert re.search(r"Next: python -m gated_lpi_exp.report --runs [0-9a-f]{8}\n", stdout)
    assert " INFO " not in stdout  # stdout holds only the results


def test_help_names_the_tool_its_groups_and_examples(tmp_path):
    text = subprocess.run(
        [*CLI, "--help"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert (
        text.startswith("gated_lpi_exp: neuron-level Gated-LPI attribution")
        and "powered by Hydra" not in text
    )
    for group in ("experiments: tiny_suites", "model: ", "relations: ", "ablation: ", "checkpoints: "):
        assert group in text, group
    assert "Examples:" in text and "python -m gated_lpi_exp -m model=tiny_moe,tiny_dense" in text
    assert 'eval "$(gated-lpi-exp -sc install=bash)"' in text


def test_every_command_logs_in_the_one_format(tmp_path):
    """The report (not started by Hydra) uses the run's format; MLflow's own records come through it."""
    code = (
        "import logging; from gated_lpi_exp.console import configure_cli_logging; configure_cli_logging(); "
        "logging.getLogger('gated_lpi_exp.x').info('ours'); logging.getLogger('mlflow.y').warning('theirs')"
    )
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stderr
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(LOG_LINE.match(line) for line in lines), err
