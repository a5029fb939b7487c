"""UI building blocks shared by the pages (and, later, the custom 3D lasso component)."""
