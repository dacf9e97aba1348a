"""Checkpoint series: local manifests and hub branches resolved to concrete revisions, and checkpoint folders
(transformers layout or OLMo v1's native layout) loaded as transformers models."""

from gated_lpi_exp.checkpoints.folder import load_folder_tokenizer, load_model
from gated_lpi_exp.checkpoints.manifest import Manifest, ManifestEntry, read_manifest, write_manifest

__all__ = [
    "Manifest",
    "ManifestEntry",
    "load_folder_tokenizer",
    "load_model",
    "read_manifest",
    "write_manifest",
]
