"""Layer 7: the Streamlit app, the only code that imports streamlit. `labelloop app` runs main.py; its pages are
views/*.py (scripts Streamlit runs, not modules to import) and their shared pieces components/."""
