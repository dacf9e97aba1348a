"""The MLflow tag and param names that more than one module writes or reads (a run, its resume, the report).

Changing one renames it in every run logged from then on; the report reads runs logged before by the same
names, so keep them stable.
"""

from __future__ import annotations

MODEL_TAG = "gated_lpi.model"
"""The run's ``model.name``."""
FAMILY_TAG = "gated_lpi.family"
"""The run's ``model.family``."""
ABLATION_TAG = "gated_lpi.ablation"
"""The run's ``ablation.name``."""
VERSION_TAG = "gated_lpi.version"
"""The package version that logged the run."""
OVERRIDES_TAG = "gated_lpi.overrides"
"""The Hydra job's command-line overrides."""
SWEEP_TAG = "gated_lpi.sweep"
"""The sweep folder shared by the jobs of one ``-m`` sweep."""
JOB_NUM_TAG = "gated_lpi.job_num"
"""The job's index in its sweep."""
RESUMED_FROM_TAG = "gated_lpi.resumed_from"
"""On a run that resumed an unfinished one: that run's id."""
RESUMED_BY_TAG = "gated_lpi.resumed_by"
"""On a run left RUNNING by a killed process: the id of the run that resumed it."""
COMPAT_TAG = "gated_lpi.compat"
"""The run's ``attribution.compat`` when it is not ``none`` (e.g. ``released_code``)."""
REPORT_TAG = "gated_lpi.report"
"""``1`` on the runs that hold a report (never read as results)."""
REPORT_RUNS_TAG = "gated_lpi.report.runs"
"""On a report run: the ids of the runs it shows."""

N_CHECKPOINTS_PARAM = "run.n_checkpoints"
"""How many checkpoints the run analysed."""
DATA_HASH_PARAM = "data.hash"
"""The fingerprint of the run's examples (:func:`gated_lpi_exp.data.dataset_hash`)."""
SUITE_SEED_PARAM = "model.suite.seed"
"""The training seed of a project suite: runs that differ only in it are seeds of one report column."""
COMPAT_PARAM = "attribution.compat"
"""The run's compatibility mode (``none``, ``released_code``)."""
SCORING_PARAM = "run.scoring"
"""What the run's compatibility mode means, in plain words (shown by the report)."""
