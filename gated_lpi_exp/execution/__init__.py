"""How a run executes its checkpoints: the walk over them and the collection of their results
(:mod:`.walk`), the stages guarded against out-of-memory and non-finite values (:mod:`.stage_guards`,
:mod:`.retry`, :mod:`.diagnose`), the processes of a multi-process run (:mod:`.process_group`) and the
attempts of a resumed run (:mod:`.attempts`)."""
