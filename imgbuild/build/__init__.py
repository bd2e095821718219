"""Stage 3, build: root filesystems bootstrapped without a registry, build contexts, the base and app image
builds, pip constraints, each image's SBOM, and the dry-run plan of all of it."""
