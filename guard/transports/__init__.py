"""Thin adapters from a wire protocol to `guard.serving`: gRPC (`grpc/`) and HTTP (`http/`)."""
