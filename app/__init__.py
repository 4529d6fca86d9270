"""Glue between the Streamlit pages and the library (see ``app.service``)."""
