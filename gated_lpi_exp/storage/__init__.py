"""What a run keeps on disk between runs: the content-addressed array store (:mod:`.arrays`), the
per-checkpoint result store (:mod:`.results`) and the run-state manifest (:mod:`.run_state`)."""
