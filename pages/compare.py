"""Metric comparison: every ranker on the same comparative sets and the full gallery, side by side."""

import streamlit as st

from pages import common, fusion_panel
from workbench import service


def render() -> None:
    st.title("Compare rankers")
    ws = common.workspace()
    common.learned_rankers_ready(ws)
    split = st.sidebar.radio(
        "Comparative sets",
        ["test", "train"],
        horizontal=True,
        key="compare_split",
        on_change=service.kept_choice("compare_split"),
    )
    results = service.evaluation(ws, tuple(service.ranker_choices(ws)), split)
    fused, fused_retrieved = fusion_panel.compare_fused(ws, split)  # the fused ranker, when added in the sidebar
    if warning := service.in_sample_warning([result.ranker for result in results], split):
        st.warning(warning, icon=":material/warning:")
    st.caption(
        f"Featurizer {ws.run}: {results[0].n_queries} {split} queries, 1 positive + {results[0].n_negatives} negatives each; "
        f"chance mean rank {results[0].chance_mean_rank:.1f}. Switch the featurizer in the sidebar to compare "
        "pretrained and fine-tuned, or set another featurizer beside this one below."
    )
    st.dataframe(service.summary_rows([*results, *fused]), hide_index=True, key="summary")
    st.subheader("Full gallery")
    st.caption(
        f"Each {split} image queries all {len(ws.embeddings)} images, itself excluded: recall@k, MAP@R, MRR, "
        "R-precision (see the Evaluation page for the definitions and per-category values)."
    )
    retrieved = service.retrieval(ws, tuple(result.ranker for result in results), split)
    st.dataframe(service.retrieval_rows([*retrieved, *fused_retrieved]), hide_index=True, key="compare_retrieval")
    st.subheader("Looks")
    st.caption(
        service.LOOKS_CAPTION + " A ranker that wins the label metrics above and loses here trades looks for labels."
    )
    looks = service.looks(ws, tuple(result.ranker for result in results), split)
    st.dataframe(service.look_rows(looks), hide_index=True, key="compare_looks")
    left, right = st.columns(2)
    left.subheader("Top-N accuracy")
    left.plotly_chart(service.top_n_curves([*results, *fused]), key="compare_top_n")
    right.subheader("Rank distributions")
    right.plotly_chart(service.rank_distributions([*results, *fused]), key="compare_ranks")
    _side_by_side(ws, split)


def _side_by_side(ws: service.Workspace, split: str) -> None:
    """This featurizer and another (pretrained vs fine-tuned), every ranker, on the same queries."""
    st.subheader("Side by side with another featurizer")
    others = service.other_featurizers(ws.run)
    if not others:
        st.info(
            "Only the pretrained featurizer so far: fine-tune a run on the Training page, then compare the two "
            "side by side here.",
            icon=":material/compare_arrows:",
        )
        return
    other = st.selectbox(
        f"Set beside {ws.run}",
        others,
        key="compare_with",
        on_change=service.kept_choice("compare_with", others),
        help="the sidebar's featurizer is the first; pick the second here",
    )
    other_ws = common.workspace(other)
    common.learned_rankers_ready(other_ws, status=False)
    rankers = service.shared_rankers([ws, other_ws])
    sections = {
        each.run: (service.evaluation(each, rankers, split), service.retrieval(each, rankers, split))
        for each in (ws, other_ws)
    }
    first = sections[ws.run][0][0]
    st.caption(
        f"The same {first.n_queries} {split} queries for both featurizers, each with 1 positive + "
        f"{first.n_negatives} negatives (top-1, mean rank) and against the whole gallery (recall@1, MAP@R); "
        "95 % intervals in brackets (Wilson score for top-1 and recall@1, bootstrap over the queries for mean rank "
        "and MAP@R). Rankers both offer, two rows each."
    )
    st.dataframe(service.side_by_side_rows(sections), hide_index=True, key="side_by_side", height="content")
    st.plotly_chart(
        service.metric_by_featurizer({run: full for run, (_, full) in sections.items()}), key="side_by_side_map"
    )


render()
