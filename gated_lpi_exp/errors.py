"""The project's exceptions: each names the problem and the fix."""


class GatedLPIError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigurationError(GatedLPIError, ValueError):
    """A config value, option or combination is invalid (raised before any model is loaded)."""


class DataError(GatedLPIError, ValueError):
    """A relation data file or directory does not match the expected layout or schema."""


class CheckpointError(GatedLPIError):
    """A checkpoint series or a single checkpoint is missing, incomplete or corrupted."""


class AttributionError(GatedLPIError):
    """Attribution cannot be computed (unsupported architecture, non-finite scores, ...)."""


class TrackingError(GatedLPIError):
    """The MLflow tracking backend cannot be reached or written."""


class NonFiniteError(AttributionError):
    """The model produced NaN or Inf (logits or scores) at a checkpoint."""
