"""Errors of the ChatGLM3 import: each message names the file (and tensor) and says what to do."""

from __future__ import annotations


class CheckpointError(Exception):
    """The source folder is not a ChatGLM3 checkpoint this importer can convert exactly."""
