"""Metric comparison: every ranker on the same comparative sets, side by side."""

import streamlit as st

from pages import common
from workbench import service


def render() -> None:
    st.title("Compare rankers")
    ws = common.workspace()
    split = st.sidebar.radio("Comparative sets", ["test", "train"], horizontal=True, key="compare_split")
    results = service.evaluation(ws, tuple(service.ranker_choices(ws)), split)
    st.caption(
        f"Featurizer {ws.run}: {results[0].n_queries} {split} queries, 1 positive + {results[0].n_negatives} negatives each; "
        f"chance mean rank {results[0].chance_mean_rank:.1f}. Switch the featurizer in the sidebar to compare "
        "pretrained and fine-tuned."
    )
    st.dataframe(service.summary_rows(results), hide_index=True, key="summary")
    left, right = st.columns(2)
    left.subheader("Top-N accuracy")
    left.plotly_chart(service.top_n_curves(results), key="compare_top_n")
    right.subheader("Rank distributions")
    right.plotly_chart(service.rank_distributions(results), key="compare_ranks")


render()
