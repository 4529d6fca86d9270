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
    column.metric(label, fmt(estimate.value), help=f"95 % confidence interval below: {estimate.how}")
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


def gallery_picker(
    ws: service.Workspace, key: str, label: str, remember: bool = False, disabled: bool = False, help: str | None = None
) -> str:
    """A gallery photo to query with (its name); ``remember`` keeps the choice across pages.

    A small gallery is one menu of every name. A large one (:func:`workbench.service.bounded_picker`) is a label menu,
    a page number and a menu of that page's names (at most 200, beside the current pick): a rerun never lists, sends
    or scans every name.
    """
    if not service.bounded_picker(ws):
        names = service.gallery_names(ws)
        remember_choice = service.kept_choice(key, names) if remember else None
        return st.selectbox(label, names, key=key, on_change=remember_choice, disabled=disabled, help=help)
    index = service.gallery_index(ws)
    remember_choice = service.kept_choice(key, index) if remember else None
    page_key = f"{key}_page"
    left, middle, right = st.columns([2, 1, 4])
    chosen_label = left.selectbox(
        "Label",
        index.labels,
        key=f"{key}_label",
        disabled=disabled,
        on_change=lambda: st.session_state.update({page_key: 1}),  # a new label starts at its first page
    )
    pages = index.pages(chosen_label)
    if st.session_state.get(page_key, 1) > pages:
        st.session_state[page_key] = pages
    page = middle.number_input(
        "Page", min_value=1, max_value=pages, step=1, key=page_key, disabled=disabled, help=f"{pages} pages"
    )
    names = index.page(chosen_label, int(page))
    current = st.session_state.get(key)
    if isinstance(current, str) and current not in names and current in index:  # the pick stays until another one
        names = [current, *names]
    picked = right.selectbox(label, names, key=key, on_change=remember_choice, disabled=disabled, help=help)
    st.caption(
        f"{len(index):,} photos in {len(index.labels):,} labels: choose a label and a page "
        f"({pages:,} for {chosen_label}) to list its names."
    )
    return picked
