"""Layer 2: where work runs (the torch device, a Ray cluster, network checks, nearest neighbours, PCA, measured rates)."""
