"""The tunelab command line: commands, typed clients, the embedded stack."""
