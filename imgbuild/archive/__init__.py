"""Stage 4, archive: image sources, the engine's save stream or its storage, layers compressed into
disc-sized volumes, the documents on every volume."""
