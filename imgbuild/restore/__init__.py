"""Stage 5, restore: verify, repair, load into an engine, load-and-run, inspect, and the record of checks."""
