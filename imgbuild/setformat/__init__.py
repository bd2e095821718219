"""The on-disc set format both sides share: file and folder names (layout), the set manifest and its checks,
per-block hashes. FORMAT.md describes it for readers without imgbuild."""
