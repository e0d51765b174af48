"""The run machinery: recipes, stages and their registry, the runner, run directories and their
locks, fingerprints, shared types and errors, JSONL, keys, threads, the model registry."""
