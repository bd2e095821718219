"""Shared foundations every stage uses: the exception tree, atomic small files, progress events, host defaults,
bounded YAML and the cache folder."""
