"""Talking to replicas: the request-path HTTP/1.1 client and the control-plane calls."""
