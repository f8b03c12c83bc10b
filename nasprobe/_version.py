"""The version of nasprobe: the one number the build (pyproject.toml) and the package read."""

__version__ = "0.1.0"
