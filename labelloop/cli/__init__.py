"""Layer 6: `labelloop <command>`, one module per command group (main.py builds the parser)."""
