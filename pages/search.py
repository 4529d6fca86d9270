"""Search page: upload a photo or pick one from the gallery, see the most similar images."""

import streamlit as st

from pages import common, fusion_panel
from workbench import service

GRID_COLUMNS = 4


def render() -> None:
    st.title("Search by image")
    ws = common.workspace()
    common.learned_rankers_ready(ws)  # fitted, or refitted when stale, before the menu is built
    with st.sidebar:
        rankers = service.ranker_choices(ws)
        ranker = st.selectbox(
            "Ranker",
            rankers,
            key="ranker",
            on_change=service.kept_choice("ranker", rankers),
            help="What each score means:\n\n"
            + service.ranker_help(rankers)
            + "\n\nLearned rankers (svm, projection) appear once fitted for this featurizer.",
        )
        k = st.slider(
            "Results", min_value=1, max_value=30, key="k", on_change=service.kept_choice("k", range(1, 31), 12)
        )
        look_weight = None
        own = service.look_weight_of(ws, ranker)
        if own is not None:  # a ranker that blends label agreement with the look (projection)
            look_weight = st.slider(
                "Look weight",
                min_value=0.0,
                max_value=1.0,
                step=0.05,
                key="look_weight",
                on_change=service.kept_choice("look_weight", default=own),
                help=f"score = (1 - w) x label agreement + w x look (cosine of the embeddings); fitted with w = {own:.2f}. "
                "Towards 1: the photos that look most like the query, its copies first; towards 0: its label first.",
            )

    upload = st.file_uploader(
        "Upload a photo",
        key=service.upload_key(),
        on_change=service.keep_upload,
        help="any common image format; nothing is stored on disk",
    )
    kept = service.kept_upload()  # the uploader's file, or the one uploaded before a page switch
    if kept is not None and upload is None:
        st.button(
            f"Searching with your upload {kept.name}: clear it",
            key="clear_upload",
            on_click=service.forget_upload,
            icon=":material/close:",
            type="tertiary",
        )
    picked = common.gallery_picker(
        ws,
        "gallery_pick",
        "…or pick a gallery image",
        remember=True,
        disabled=kept is not None,
        help="clear the upload to search with a gallery image",
    )
    query = kept or service.gallery_query(ws, picked)
    data, name = query.data, query.name

    try:
        result = service.search(ws, data, name, ranker, k, look_weight)
    except service.WorkbenchError as err:
        st.error(f"Cannot use this file: {err}")
        return
    left, right = st.columns([1, 3])
    left.image(result.query, caption=f"query: {name}", width="stretch")
    right.caption(
        f"{ranker} ranker · {len(result.hits)} results in {result.seconds * 1000:.0f} ms · featurizer {ws.run} ({ws.backend})"
    )
    right.caption(f"Score: {service.score_meaning(ranker)}.")
    if note := service.score_note(ws, ranker, look_weight):
        right.caption(note)
    strength = service.match_strength(ws, result.query)
    if not strength.close:
        right.warning(
            f"No close match: {strength.explain()}.",
            icon=":material/travel_explore:",
        )
    right.download_button(
        "Download results (CSV)",
        service.results_csv(ws, result, ranker),
        file_name="search-results.csv",
        mime="text/csv",
        key="download_results",
        icon=":material/download:",
    )
    for start in range(0, len(result.hits), GRID_COLUMNS):  # one row of columns per line: rows stay aligned
        columns = right.columns(GRID_COLUMNS)
        for column, hit in zip(columns, result.hits[start : start + GRID_COLUMNS], strict=False):
            with column:
                st.image(service.thumbnail(hit.record.path), width="stretch")
                score = 0.0 if abs(hit.score) < 5e-4 else hit.score  # no "-0.000" for the query itself under L2
                st.markdown(f"**{hit.rank}.** {hit.record.label} · `{score:.3f}`")
                if parts := service.hit_parts(hit):
                    st.caption(parts)
                st.button(
                    "Search from this",
                    key=f"search_from_{hit.rank}",
                    on_click=service.search_from,
                    args=(service.gallery_name(ws, hit.record),),
                    type="tertiary",
                    icon=":material/search:",
                )

    fusion_panel.search_panel(ws, data, name, k)  # the label folders and attributes weighed with sliders
    if not st.toggle("Explain a result (similarity heatmaps)", key="explain"):
        return
    with st.container(border=True):
        ranks = [hit.rank for hit in result.hits]
        rank = st.selectbox(
            "Result",
            ranks,
            index=min(1, len(ranks) - 1),
            key="explain_rank",
            format_func=lambda r: f"{r}. {result.hits[r - 1].record.label}",
        )
        hit = result.hits[rank - 1]
        explanation = service.explain(ws, data, name, hit.record)
        st.caption(
            service.explain_caption(ws, ranker, hit.score, explanation.similarity, look_weight)
            + " The similarity is split exactly over the regions of each image: red regions contribute most, blue "
            "least. Each image is shown as the model sees it: resized and centre-cropped to its square input, so the "
            "edges of a wide or tall photo are not part of the match."
        )
        cells = st.columns(2)
        cells[0].image(explanation.query_overlay, caption="query", width="stretch")
        cells[1].image(explanation.result_overlay, caption=f"result {rank}", width="stretch")


render()
