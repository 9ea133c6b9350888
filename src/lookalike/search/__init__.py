"""Vector index kinds, exact and filtered top-k, all-items neighbours, re-ranking."""
