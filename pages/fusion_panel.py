"""The fusion panel: weigh what "similar" means (the label folders and each attribute of the dataset) with sliders,
and see the fused ranking on the Search page; the fused ranker beside the others on Compare."""

import streamlit as st

from workbench import service

GRID_COLUMNS = 4


def _rankers(ws: service.Workspace) -> service.attribute_fusion.AttributeRankers | None:
    """The attribute rankers, fitted with a progress bar the first time; None (with the reason shown) when unusable."""
    bar = st.empty()

    def update(done: int, total: int, condition: str) -> None:
        if condition:
            bar.progress(done / total, text=f"Fitting the {condition} ranker ({done + 1}/{total}), first time only")

    try:
        with st.spinner("Getting the attribute rankers ready…"):
            rankers = service.attribute_rankers(ws, update)
    except service.WorkbenchError as err:
        st.error(f"No fusion for this dataset: {err}")
        return None
    finally:
        bar.empty()
    for condition, reason in rankers.failed:
        st.warning(f"No {service.condition_title(condition)} ranker to fuse: {reason}")
    return rankers if rankers.conditions else None


def search_panel(ws: service.Workspace, data: bytes, name: str, k: int) -> None:
    """On the Search page: a toggle, then one weight slider per meaning of "similar" beside the fused top ``k`` of the
    query, redrawn whenever a slider moves. Nothing when the dataset has no attributes."""
    if not service.fusion_conditions():
        return
    if not st.toggle(
        "Fuse meanings of similar (label folders and attributes)",
        key="fusion_on",
        on_change=service.kept_choice("fusion_on"),
        help="each meaning brings its calibrated probability that two photos are the same; the sliders weigh them",
    ):
        return
    with st.container(border=True, key="fusion_panel"):
        rankers = _rankers(ws)
        if rankers is None:
            return
        sliders, results = st.columns([1, 3])
        with sliders:
            st.markdown("**Weights**")
            for condition in rankers.conditions:
                key = service.fusion_weight_key(condition)
                st.slider(
                    f"same {service.condition_title(condition)}",
                    min_value=0.0,
                    max_value=1.0,
                    step=0.05,
                    key=key,
                    on_change=service.kept_choice(key, default=service.default_fusion_weight(condition)),
                )
        weights = service.fusion_weights(rankers.conditions)
        try:
            result = service.fused_search(ws, rankers, data, name, weights, k)
        except service.WorkbenchError as err:
            results.warning(str(err))
            return
        results.caption(
            f"fusion ranker · {len(result.hits)} results in {result.seconds * 1000:.0f} ms · "
            f"score = {service.fusion_formula(rankers, weights)}"
        )
        for start in range(0, len(result.hits), GRID_COLUMNS):
            columns = results.columns(GRID_COLUMNS)
            for column, hit in zip(columns, result.hits[start : start + GRID_COLUMNS], strict=False):
                with column:
                    st.image(service.thumbnail(hit.record.path), width="stretch")
                    st.markdown(f"**{hit.rank}.** {hit.record.label} · `{hit.score:.3f}`")
                    st.caption(service.attribute_line(ws, hit.record))


def compare_fused(
    ws: service.Workspace, split: str
) -> tuple[list[service.EvaluationResult], list[service.RetrievalResult]]:
    """On Compare: a sidebar switch that adds the fused ranker (the Search page's weights) to every table and chart;
    its results on the comparative sets and the full gallery, or two empty lists."""
    if not service.fusion_conditions() or not st.sidebar.toggle(
        "Add the fused ranker",
        key="compare_fusion",
        on_change=service.kept_choice("compare_fusion"),
        help="fusion of the label folders' and the attributes' rankers, with the Search page's weights",
    ):
        return [], []
    rankers = _rankers(ws)
    if rankers is None:
        return [], []
    weights = service.fusion_weights(rankers.conditions)
    try:
        evaluation, retrieval = service.fused_results(ws, rankers, weights, split)
    except service.WorkbenchError as err:
        st.warning(f"No fused ranker: {err}")
        return [], []
    st.caption(f"fusion = {service.fusion_formula(rankers, weights)} (the weights of the Search page's sliders)")
    return [evaluation], [retrieval]
