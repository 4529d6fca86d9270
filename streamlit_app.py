"""Streamlit entry point: sets up the page and routes; the pages do the drawing."""

import streamlit as st

st.set_page_config(page_title="Similarity workbench", layout="wide")
st.navigation(
    [
        st.Page("pages/search.py", title="Search", default=True),
        st.Page("pages/evaluation.py", title="Evaluation"),
    ]
).run()
