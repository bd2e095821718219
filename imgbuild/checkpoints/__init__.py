"""Stage 2, checkpoints: the lock file, the Hub client, resumable HTTP transfers, the download into the cache,
and the staging of locked files into a build context."""
