"""Layer 4 (beside maps): training families, one module each, listed in registry.py; the pipeline every run goes
through, its Ray Train and Ray Tune adapters (on_ray.py, sweep.py), prediction, and the per-sample scores a run writes."""
