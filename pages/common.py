"""Drawing helpers shared by the pages."""

import streamlit as st

from workbench import service


def featurizer_picker() -> str:
    """Sidebar choice of featurizer (pretrained or a fine-tuned run), shared by every page."""
    choices = service.featurizer_choices()
    remember = service.kept_choice("featurizer", choices)
    if st.session_state.get("featurizer") not in choices:
        st.session_state["featurizer"] = choices[0]
    return st.sidebar.selectbox(
        "Featurizer", choices, key="featurizer", on_change=remember, help="pretrained, or a fine-tuned run"
    )


def condition_picker() -> str:
    """Sidebar choice of what "similar" means in this session: the label folders or an attribute of the dataset's
    ``attributes.csv`` (drawn only when it has attributes); returns the condition ("" = the label folders)."""
    attributes = service.conditions()
    current = service.active_condition()
    if not attributes:
        return current
    options = [service.condition_title(""), *attributes]
    picked = st.sidebar.selectbox(
        "Similar means: same …",
        options,
        index=options.index(service.condition_title(current)) if service.condition_title(current) in options else 0,
        key="condition",
        help="attributes come from attributes.csv in the dataset folder; each meaning has its own split, rankers "
        "and evaluation (for this browser session only)",
    )
    chosen = "" if picked == options[0] else picked
    if chosen != current:
        service.use_condition(chosen)
    return chosen


def workspace(choice: str | None = None) -> service.Workspace:
    """The cached workspace; on its first use, shows a progress bar while the gallery is featurized."""
    condition_picker()  # first: the featurizers on offer and the workspace follow the condition
    choice = choice or featurizer_picker()
    holder = st.empty()

    def update(done: int, total: int) -> None:
        holder.progress(
            done / max(total, 1), text=f"Featurizing the gallery ({choice}): {done}/{total} images, first time only"
        )

    with st.spinner(f"Loading the {choice} model and the dataset…"):
        ws = service.workspace(choice, update)
    holder.empty()
    return ws


def metric_with_ci(column, label: str, estimate, percent: bool = False) -> None:
    """An ``st.metric`` showing a value with its 95 % confidence interval underneath."""
    fmt = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.2f}")
    column.metric(label, fmt(estimate.value), help="bootstrap 95 % confidence interval below")
    column.caption(f"95 % CI {fmt(estimate.low)} – {fmt(estimate.high)}")


def learned_rankers_ready(ws: service.Workspace, status: bool = True) -> None:
    """Fit the quick learned rankers missing for this featurizer, with a progress bar (first open only); with
    ``status``, the sidebar says what changed in the folder (once per page: for the sidebar's featurizer)."""
    bar = st.empty()

    def update(done: int, total: int, name: str) -> None:
        if name:
            bar.progress(
                done / total,
                text=f"Fitting the {name} ranker for this featurizer ({done + 1}/{total}), first time only",
            )

    with st.spinner("Getting the learned rankers ready…"):
        ready = service.ensure_learned_rankers(ws, update)
    bar.empty()
    for name, reason in ready.failed:
        st.warning(f"No {name} ranker for this dataset: {reason}")
    if status:
        folder_status(ws)


def folder_status(ws: service.Workspace) -> None:
    """Sidebar lines: what changed in the dataset folder when it was last opened, and what changed since the
    learned rankers were fitted (the same line the CLI and the REST service give)."""
    if ws.changes and not ws.changes.first:
        st.sidebar.info(f"Dataset folder: {ws.changes.summary()} since it was last opened.")
    line = service.since_fit_line(ws)
    if line:
        st.sidebar.warning(line)
