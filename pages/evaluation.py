"""Evaluation dashboard: one featurizer and ranker on the comparative sets and the full gallery, in depth."""

import streamlit as st

from pages import common
from workbench import service


def render() -> None:
    st.title("Evaluation")
    ws = common.workspace()
    common.learned_rankers_ready(ws)
    with st.sidebar:
        rankers = service.ranker_choices(ws)
        ranker = st.selectbox(
            "Ranker", rankers, key="eval_ranker", on_change=service.kept_choice("eval_ranker", rankers)
        )
        split = st.radio(
            "Comparative sets", ["test", "train"], horizontal=True, key="split", on_change=service.kept_choice("split")
        )
    [result] = service.evaluation(ws, (ranker,), split)
    if warning := service.in_sample_warning((ranker,), split):
        st.warning(warning, icon=":material/warning:")
    st.caption(
        f"{result.n_queries} {split} queries, each ranked against 1 positive + {result.n_negatives} negatives "
        f"(chance mean rank {result.chance_mean_rank:.1f}); featurizer {ws.run}, ranker {ranker}."
    )
    columns = st.columns(4)
    common.metric_with_ci(columns[0], "mean rank", result.mean_rank)
    common.metric_with_ci(columns[1], "median rank", result.median_rank)
    common.metric_with_ci(columns[2], "top-1", result.top1, percent=True)
    common.metric_with_ci(columns[3], "top-5", result.top5, percent=True)

    left, right = st.columns(2)
    left.subheader("Rank of the positive")
    left.plotly_chart(service.rank_histogram([result]), key="rank_hist")
    right.subheader("Top-N accuracy")
    right.plotly_chart(service.top_n_curves([result]), key="top_n")

    st.subheader("Per category")  # the table on its own row: beside the chart it clipped its last column
    st.dataframe(service.category_rows(result), hide_index=True, key="categories", width="stretch")
    st.plotly_chart(service.per_category_bars(result), key="category_bars")

    st.subheader("Full gallery")
    [full] = service.retrieval(ws, (ranker,), split)
    dropped = f"; {full.n_dropped} dropped (no other image of their label)" if full.n_dropped else ""
    st.caption(
        f"Each of the {full.n_queries} {split} images queries all {len(ws.embeddings)} images, itself excluded{dropped}: "
        "recall@k = a same-label image among the first k; MAP@R and R-precision over the first R results, R = the "
        "number of other images of the query's label; MRR = 1 / rank of the first same-label image."
    )
    st.dataframe(service.retrieval_rows([full]), hide_index=True, key="retrieval_summary")
    st.dataframe(service.retrieval_category_rows(full), hide_index=True, key="retrieval_categories")

    st.subheader("Looks")
    [look] = service.looks(ws, (ranker,), split)
    sampled = f" ({look.note})" if look.note else ""
    st.caption(f"{service.LOOKS_CAPTION} {look.n_copies} {split} images{sampled}.")
    columns = st.columns(4)
    common.metric_with_ci(columns[0], "copy recall@1", look.recall_at_1, percent=True)
    common.metric_with_ci(columns[1], "mean rank of original", look.mean_rank)
    st.download_button(
        "Download this evaluation (JSON)",
        service.evaluation_json(ws, result, full, split),
        file_name=f"evaluation-{ws.run}-{ranker}-{split}.json",
        mime="application/json",
        key="download_evaluation",
        icon=":material/download:",
    )
    _model_download(ws)

    st.subheader("Queries")
    filters = st.columns(2)
    category = filters[0].selectbox("Category", ["all", *(c.label for c in result.per_category)], key="qual_category")
    failures = filters[1].toggle("Failures only (positive not ranked first)", key="failures_only")
    rows = service.qualitative_rows(ws, result, None if category == "all" else category, failures)
    if not rows:
        st.info("No query matches these filters.")
    for row in rows:
        cells = st.columns(3)
        cells[0].image(service.thumbnail(row.query.path), caption=f"query · {row.query.label}", width=160)
        cells[1].image(service.thumbnail(row.best.path), caption=f"ranked first · {row.best.label}", width=160)
        cells[2].image(service.thumbnail(row.positive.path), caption=f"true positive · rank {row.rank}", width=160)


def _model_download(ws: service.Workspace) -> None:
    """The featurizer as ONNX, alone or with the projection ranker baked in: exported on demand, then offered."""
    st.subheader("The model as ONNX")
    st.caption(
        f"Featurizer {ws.run} in one ONNX file: uint8 RGB pixels [batch, size, size, 3], resized and centre-cropped, "
        "in; the L2-normalised embedding out (rank by cosine); checked against PyTorch when exported. With the "
        "projection ranker baked in, the output is that ranker's vector instead (rank by dot product)."
    )
    choices = service.onnx_choices(ws)
    kind = st.radio(
        "Model", choices, horizontal=True, key="onnx_kind", on_change=service.kept_choice("onnx_kind", choices)
    )
    with_projection = kind != choices[0]
    model = service.ready_onnx(ws, with_projection)  # nothing is exported before the button is pressed
    if model is None and st.button("Export to ONNX", key="onnx_export", icon=":material/build:"):
        with st.spinner("Exporting the model and checking it against PyTorch…"):
            try:
                model = service.make_onnx(ws, with_projection)
            except service.WorkbenchError as err:
                st.error(f"Cannot export: {err}")
    if model is not None:
        st.download_button(
            f"Download {model.file_name} ({model.size_mb:.1f} MB)",
            model.read,  # read when clicked
            file_name=model.file_name,
            mime="application/octet-stream",
            key="download_onnx",
            icon=":material/download:",
        )


render()
