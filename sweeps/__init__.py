"""Entry points run as `python -m sweeps.<name>`."""
