"""gated_lpi_exp: Gated-LPI knowledge attribution across pre-training checkpoints."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gated_lpi_exp")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
