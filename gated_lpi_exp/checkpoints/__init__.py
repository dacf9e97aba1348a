"""Checkpoint series: local manifests and hub branches resolved to concrete revisions."""

from gated_lpi_exp.checkpoints.manifest import Manifest, ManifestEntry, read_manifest, write_manifest

__all__ = ["Manifest", "ManifestEntry", "read_manifest", "write_manifest"]
