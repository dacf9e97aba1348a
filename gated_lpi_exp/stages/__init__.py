"""The stages of a run, as plain functions with validated table outputs."""
