"""Typed clients of the tunelab services, used by the CLI and the job agent."""
