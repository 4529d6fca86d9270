"""Evaluation page: every ranker on the same test comparative sets."""

import streamlit as st

from workbench import service
from pages import common


def render() -> None:
    st.title("Evaluation")
    ws = common.workspace()
    split = st.radio("Comparative sets", ["test", "train"], horizontal=True, key="split")
    results = service.evaluation(split=split)
    st.caption(
        f"{results[0].n_queries} queries, each ranked against 1 positive + {results[0].n_negatives} negatives; "
        f"chance mean rank {results[0].chance_mean_rank:.1f}. Featurizer `{ws.featurizer.fingerprint}`."
    )
    st.dataframe(service.summary_rows(results), hide_index=True)


render()
