"""Layer 1: label tables and what lives beside them (schema, change sets, diffs, the Delta table, storage, workspaces, import, images, exchange, run records)."""
