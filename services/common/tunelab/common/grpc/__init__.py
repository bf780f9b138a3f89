"""gRPC runtime: interceptors, server bootstrap and client channels."""
