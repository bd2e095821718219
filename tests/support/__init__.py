"""Test helpers shared by the test modules: the local Hub-protocol server."""
