"""The command groups of the tunelab command line."""
