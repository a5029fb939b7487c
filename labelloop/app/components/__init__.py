"""What the pages share: the three.js map (scatter3d.*), the commit-conflict component, background jobs, caches,
the settings form, session keys, the sidebar and the error boundary every page runs in."""
