"""``python -m gated_lpi_exp.report --help``."""

from gated_lpi_exp.report.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
