"""Generated gRPC stubs for hivemind.nodepool.v1 (scripts/gen_proto.py)."""
