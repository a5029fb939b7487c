"""Layer 5: what the runs and checks say about the data (data health, the review queue, fair accuracy across versions)."""
