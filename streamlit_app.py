"""Streamlit entry point: sets up the page and routes; the pages do the drawing."""

import streamlit as st

st.set_page_config(page_title="Similarity workbench", layout="wide")
st.navigation(
    [
        st.Page("pages/search.py", title="Search", default=True),
        st.Page("pages/evaluation.py", title="Evaluation"),
        st.Page("pages/compare.py", title="Compare rankers"),
        st.Page("pages/label_errors.py", title="Label errors"),
        st.Page("pages/explore.py", title="Explore"),
        st.Page("pages/training.py", title="Training"),
        st.Page("pages/dataset.py", title="Dataset"),
    ]
).run()
