"""Parity volumes: the erasure code, writing and describing parity volumes, and the damage assessment that says
what parity can rebuild."""
