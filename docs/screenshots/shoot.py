"""Screenshots of what a person sees, from a real headless Chromium: the MLflow UI (the runs of the latest sweep,
a run's overview and charts, a table preview, the sweep's comparison report on its parent run) and the HTML
report. ``make.sh`` runs it against a fresh sweep and a real ``mlflow server``.

Usage: python docs/screenshots/shoot.py --ui http://127.0.0.1:PORT --store sqlite:///mlflow.db
    --report report/report.html --out docs/screenshots
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from mlflow.tracking import MlflowClient
from PIL import Image
from playwright.sync_api import Page, sync_playwright

from gated_lpi_exp.tracking.names import PARENT_RUN_TAG, SWEEP_PARENT_TAG
from gated_lpi_exp.tracking.ui import runs_page, ui_path

VIEWPORT = {"width": 1440, "height": 900}
FIRST_VISIT = """
localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
localStorage.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true");
"""
"""What a person who closed MLflow's assistant panel once has in the browser (it covers a third of the page)."""


def browser_path() -> str:
    """The Chromium to drive: $CHROMIUM, else the system's."""
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate:
            return candidate
    raise SystemExit("No Chromium found: install it (apt-get install -y chromium) or set CHROMIUM=/path.")


def show(page: Page, url: str, text: str | None = None, wait_ms: int = 5000) -> None:
    """Open ``url``, wait for ``text`` to appear (when given) and for charts and tables to draw."""
    page.goto("about:blank")  # a full load: the UI's router does not always follow a change of the # part
    page.goto(url)
    if text:
        page.get_by_text(text, exact=False).first.wait_for(timeout=90_000)
    page.wait_for_timeout(wait_ms)


def shrink(path: Path) -> None:
    """Store a screenshot with a 256-colour palette: a UI's flat colours survive, the file is ~3x smaller."""
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def latest_sweep(client: MlflowClient) -> tuple[str, str, str]:
    """Experiment id, the newest sweep's parent run id and its first job's run id (MoE first)."""
    experiment = client.get_experiment_by_name("gated_lpi_exp")
    if experiment is None:
        raise SystemExit("No experiment gated_lpi_exp in the store: run the sweep first (make.sh).")
    eid = experiment.experiment_id
    parents = client.search_runs([eid], f"tags.`{SWEEP_PARENT_TAG}` = '1'", order_by=["start_time DESC"])
    parent = parents[0].info.run_id
    jobs = client.search_runs([eid], f"tags.`{PARENT_RUN_TAG}` = '{parent}'", order_by=["run_name ASC"])
    job = next((r for r in jobs if "moe" in (r.info.run_name or "")), jobs[0])
    return eid, parent, job.info.run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ui", required=True, help="the MLflow server's URL")
    parser.add_argument("--store", required=True, help="its backend store URI (to find the runs)")
    parser.add_argument("--report", required=True, help="the HTML report to show")
    parser.add_argument("--out", required=True, help="folder for the PNG files")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    eid, parent, job = latest_sweep(MlflowClient(args.store))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path(), args=["--no-sandbox"])
        context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        context.add_init_script(FIRST_VISIT)
        page = context.new_page()
        show(page, f"{args.ui}/{runs_page(eid)}", "sweep ")
        page.locator("[data-component-id*='runnamecellrenderer']").first.click()  # expand the sweep
        page.wait_for_timeout(3000)
        page.screenshot(path=str(out / "mlflow_runs.png"))
        run_page = f"{args.ui}/{ui_path(eid, job)}"
        show(page, run_page, "Description")
        page.screenshot(path=str(out / "mlflow_run_overview.png"))
        show(page, run_page.replace("?", "/model-metrics?"), "Model metrics")
        page.get_by_placeholder("Search metric charts").fill("hit_at_10")
        page.wait_for_timeout(4000)
        page.screenshot(path=str(out / "mlflow_run_charts.png"))
        table = run_page.replace("?", "/artifacts/tables/dynamics_summary.csv?")
        show(page, table, "dynamics_summary.csv")
        page.screenshot(path=str(out / "mlflow_table_preview.png"))
        report = f"{args.ui}/{ui_path(eid, parent)}".replace("?", "/artifacts/report/report.html?")
        show(page, report, "report/report.html", wait_ms=8000)
        page.screenshot(path=str(out / "mlflow_sweep_report.png"))
        show(page, Path(args.report).resolve().as_uri(), "Gated-LPI report", wait_ms=2000)
        page.set_viewport_size({"width": 1440, "height": 1500})
        page.screenshot(path=str(out / "report.png"))
        browser.close()
    for png in out.glob("*.png"):
        shrink(png)
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main()
