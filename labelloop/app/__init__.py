"""Layer 7: the Streamlit app, the only code that imports streamlit. `labelloop app` runs main.py's main() (from the
workspace's entry script); its pages are views/*.py (scripts Streamlit runs, not modules to import) and their shared
pieces components/."""

from pathlib import Path

VIEWS = Path(__file__).resolve().parent / "views"
"""The pages, named by absolute path (in st.navigation and st.switch_page): the entry script Streamlit runs is not beside them."""
