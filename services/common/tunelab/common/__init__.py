"""Shared runtime of every tunelab service: settings, logging, errors, gRPC bootstrap, storage."""
