"""A click parameter type for arguments that are local paths or fsspec URLs."""

from __future__ import annotations

import os

import click

from nasprobe.errors import NasprobeError
from nasprobe.store.storage import checked_path, is_url

__all__ = ["PathOrUrl"]


class PathOrUrl(click.ParamType):
    """A local path (checked to exist when ``exists``) or an fsspec URL (``s3://``, ...),
    returned as a string. A URL mangled into a path (``s3:/bucket``) is refused."""

    name = "path_or_url"

    def __init__(self, exists: bool = False):
        self.exists = exists

    def convert(self, value, param, ctx):
        """The value as a string (see the class docstring)."""
        try:
            text = checked_path(value)
        except NasprobeError as exc:
            self.fail(str(exc), param, ctx)
        if not is_url(text) and self.exists and not os.path.exists(text):
            self.fail(f"{text!r} does not exist", param, ctx)
        return text
