"""Generated from proto/ by guard.grpc_gen.generate; do not edit."""
