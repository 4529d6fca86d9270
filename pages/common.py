"""Drawing helpers shared by the pages."""

import streamlit as st

from workbench import service


def workspace() -> service.Workspace:
    """The cached workspace; on the first run, shows a progress bar while the gallery is featurized."""
    holder = st.empty()

    def update(done: int, total: int) -> None:
        holder.progress(done / max(total, 1), text=f"Featurizing the gallery: {done}/{total} images (first run only)")

    with st.spinner("Loading the model and the dataset…"):
        ws = service.workspace(update)
    holder.empty()
    return ws
