"""The gRPC transport: whisperguard.v1.Guard, health, reflection, bearer auth, TLS."""
