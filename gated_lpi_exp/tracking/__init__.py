"""MLflow: the tracker service (:mod:`.tracker`), what a run logs (:mod:`.run_logging`) and the tag and
param names that runs, resumes and the report share (:mod:`.names`)."""
