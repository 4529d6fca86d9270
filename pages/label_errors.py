"""Likely label errors: images whose nearest neighbours mostly carry another label, with those neighbours."""

import streamlit as st

from pages import common
from workbench import service

NEIGHBOURS_PER_ROW = 5


def render() -> None:
    st.title("Likely label errors")
    ws = common.workspace()
    common.learned_rankers_ready(ws)  # fitted, or refitted when stale, before the menu is built
    with st.sidebar:
        choices = service.label_error_ranker_choices(ws)
        ranker = st.selectbox(
            "Ranker", choices, key="label_errors_ranker", on_change=service.kept_choice("label_errors_ranker", choices)
        )
        k = st.slider(
            "Neighbours that vote",
            min_value=1,
            max_value=30,
            key="label_errors_k",
            on_change=service.kept_choice("label_errors_k", range(1, 31), 10),
        )
        min_share = st.slider(
            "Smallest share of the other label",
            min_value=0.3,
            max_value=1.0,
            step=0.05,
            key="label_errors_share",
            on_change=service.kept_choice("label_errors_share", default=0.5),
            help="an image is listed when at least this share of its neighbours carry one other label",
        )
    report = service.label_errors(ws, ranker, k, min_share)
    st.caption(
        f"Each of the {report.n_images} images is compared with its {report.k} nearest other images ({ranker} "
        f"ranker, featurizer {ws.run}); listed when at least {report.min_share:.0%} of them carry one other label "
        "and it outnumbers the image's own. "
        + (
            f"Neighbourhood capped at {report.k}: the smallest label has {report.k + 1} images. "
            if report.k < k
            else ""
        )
        + "Check these files: a wrong folder, an ambiguous photo, or a label the featurizer cannot tell apart."
        + (
            f" The {ranker} ranker learned from these labels, so it tends to agree with them: errors among its "
            "training images can hide; a plain ranker (cosine) does not."
            if service.is_learned_ranker(ranker)
            else ""
        )
    )
    if not report.errors:
        st.success("No likely label errors: every image's neighbours mostly share its label.")
        return
    st.markdown(f"**{len(report.errors)} likely label error(s)**, most suspicious first.")
    for error in report.errors:
        with st.container(border=True):
            left, right = st.columns([1, 3])
            left.image(str(error.record.path), width=160)
            left.markdown(f"`{service.gallery_name(ws, error.record)}`  \nlabelled **{error.record.label}**")
            right.markdown(
                f"{error.share:.0%} of its {report.k} neighbours are **{error.neighbour_label}**; "
                f"{error.own_share:.0%} are {error.record.label}."
            )
            for start in range(0, len(error.neighbours), NEIGHBOURS_PER_ROW):  # every neighbour the line counts
                cells = right.columns(NEIGHBOURS_PER_ROW)
                row = error.neighbours[start : start + NEIGHBOURS_PER_ROW]
                for cell, neighbour in zip(cells, row, strict=False):
                    cell.image(str(neighbour.path), caption=neighbour.label, width=110)


render()
