"""Training: heads on embeddings (cross-validated, with model selection), and their settings."""
