"""Streamlit pages: each page file defines ``render()``, which draws widgets and shows results, and calls it."""
