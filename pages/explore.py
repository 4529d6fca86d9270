"""Explore page: the embedding map, and why a result was ranked as similar."""

import streamlit as st

from pages import common
from workbench import service


def render() -> None:
    st.title("Explore")
    ws = common.workspace()
    common.folder_status(ws)
    methods = service.projection_methods()
    method = st.sidebar.radio(
        "Projection",
        methods,
        horizontal=True,
        key="projection",
        on_change=service.kept_choice("projection", methods),
        format_func=str.upper,
        help="PCA: a linear view of the two main directions; UMAP: keeps neighbourhoods (first use compiles, ~20 s)"
        if "umap" in methods
        else "UMAP is not offered: install umap-learn (pip install umap-learn) to add it",
    )
    upload = st.file_uploader("Query photo (optional; default: the picked gallery image)", key="explore_upload")
    picked = common.gallery_picker(ws, "explore_pick", "Gallery query", disabled=upload is not None)
    query = service.Upload(upload.name, upload.getvalue()) if upload is not None else service.gallery_query(ws, picked)
    data, name = query.data, query.name

    try:
        with st.spinner(f"Fitting the {method.upper()} map…"):
            mapping = service.embedding_projection(ws, method)
        query_point = service.place_on_map(ws, mapping, data, name)
        hits = service.search(ws, data, name, "cosine", 8).hits
    except service.WorkbenchError as err:
        st.error(f"Cannot use this file: {err}")
        return

    st.subheader("Embedding map")
    if mapping.projection.method != method:  # never a PCA map under the UMAP label
        st.warning(f"{method.upper()} is not available here; this is the {mapping.projection.method.upper()} map.")
    shown = (
        f"a sample of {len(mapping.rows):,} of {mapping.total:,} photos (stratified by label; the map is fitted on "
        "the sample and the query placed on it)"
        if mapping.sampled
        else f"{mapping.total:,} gallery embeddings"
    )
    st.caption(
        f"{mapping.projection.method.upper()} of {shown} ({ws.run}); the star is the query. Select a point to see it."
    )
    event = st.plotly_chart(
        service.embedding_map(mapping.projection.points, mapping.labels, mapping.names, query_point, mapping.rows),
        key="embedding_map",
        on_select="rerun",
        selection_mode="points",
    )
    points = event.selection.points if event else []
    selected = [int(index) for point in points if (index := point.get("customdata")) is not None]
    if selected:  # a point's customdata is its record row
        record = service.gallery_record(ws, selected[0])
        st.image(str(record.path), caption=f"{record.label} · {service.gallery_name(ws, record)}", width=220)

    st.subheader("Why these results?")
    labels = [f"{hit.rank}. {hit.record.label} · {service.gallery_name(ws, hit.record)}" for hit in hits]
    choice = st.selectbox(
        "Result to explain (cosine ranking)", labels, index=min(1, len(labels) - 1), key="explain_hit"
    )
    hit = hits[labels.index(choice)]
    explanation = service.explain(ws, data, name, hit.record)
    st.caption(
        f"Cosine similarity {explanation.similarity:.3f}, split exactly over the regions of each image: red regions "
        "contribute most to the similarity, blue least. Each image is shown as the model sees it: resized and "
        "centre-cropped to its square input."
    )
    left, right = st.columns(2)
    left.image(explanation.query_overlay, caption="query", width="stretch")
    right.image(explanation.result_overlay, caption=f"result {hit.rank}: {hit.record.label}", width="stretch")


render()
