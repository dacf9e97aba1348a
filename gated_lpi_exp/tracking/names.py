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
SWEEP_PARENT_TAG = "gated_lpi.sweep_parent"
"""``1`` on the parent run of a ``-m`` sweep (its jobs' runs are nested under it; never read as results)."""
REPORT_TAG = "gated_lpi.report"
"""``1`` on the runs that hold a report (never read as results)."""
REPORT_RUNS_TAG = "gated_lpi.report.runs"
"""On a report run: the ids of the runs it shows."""

N_CHECKPOINTS_PARAM = "run.n_checkpoints"
"""How many checkpoints the run analysed."""
DATA_HASH_PARAM = "data.hash"
"""The fingerprint of the run's examples (:func:`gated_lpi_exp.data.dataset_hash`)."""
COMPAT_PARAM = "attribution.compat"
"""The run's compatibility mode (``none``, ``released_code``)."""
SCORING_PARAM = "run.scoring"
"""What the run's compatibility mode means, in plain words (shown by the report)."""

NOTE_TAG = "mlflow.note.content"
"""MLflow's description of a run or an experiment (shown at the top of its page)."""
SOURCE_NAME_TAG = "mlflow.source.name"
"""MLflow's "Source" of a run (by default the script's path, ``.../__main__.py``)."""
PARENT_RUN_TAG = "mlflow.parentRunId"
"""MLflow's link from a nested run to its parent."""
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""MLflow's kind of an experiment; the UI offers GenAI views (traces, judges) or model-training views."""
EXPERIMENT_KIND = "custom_model_development"
"""The kind this project's experiments get: model development, not GenAI."""
SAVED_VIEW_TAG = "mlflow.sharedViewState.gated_lpi_results"
"""An MLflow UI saved view of the experiment's runs (in the runs page's Views menu): the result columns
below instead of none. Opened directly by the runs-page URLs the tool prints (``viewStateShareKey``)."""
RESULT_COLUMNS = (
    "final.hit_at_1",
    "final.hit_at_10",
    "j_stab.ffn.mean",
    "j_stab.attn.mean",
    "r_t.ffn.mean",
    "r_t.attn.mean",
    "rho_avg.ffn",
    "sigma_rel.ffn",
)
"""The metrics the saved view shows as columns (besides model, relations and ablation)."""
