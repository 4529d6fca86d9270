"""Dataset page: label counts, split sizes and sample images."""

import streamlit as st

from pages import common
from workbench import service


def render() -> None:
    st.title("Dataset")
    with st.form("dataset_form"):
        folder = st.text_input(
            "Dataset folder (one sub-folder per label)", value=str(service.data_folder()), key="data_folder"
        )
        if st.form_submit_button("Use this folder"):
            try:
                service.use_dataset(folder)
                st.success(
                    "Dataset switched for this browser session: every page now works on it (first use prepares and featurizes it)."
                )
            except service.WorkbenchError as err:
                st.error(str(err))
    common.condition_picker()
    summary = service.dataset_summary()
    n_train = sum(train for train, _ in summary.counts.values())
    n_test = sum(test for _, test in summary.counts.values())
    st.caption(f"{summary.root}")
    columns = st.columns(4)
    columns[0].metric("labels", len(summary.counts))
    columns[1].metric("images", n_train + n_test)
    columns[2].metric("train / test", f"{n_train} / {n_test}")
    columns[3].metric(
        "test queries", summary.n_test_queries, help=f"each with 1 positive + {summary.n_negatives} negatives"
    )
    st.plotly_chart(service.label_counts_bar(summary.counts), key="label_counts")
    if summary.skipped:
        with st.expander(f"{len(summary.skipped)} file(s) skipped while scanning"):
            st.write("\n".join(f"- {reason}" for reason in summary.skipped))
    if summary.n_leaks:
        st.warning(
            f"{summary.n_leaks} near-duplicate pair(s) straddle the train/test split; `python -m workbench dedup` removes them."
        )
        with st.expander(f"Near-duplicates across the split (the closest {len(summary.leaks)})"):
            st.write("\n".join(f"- {leak}" for leak in summary.leaks))
    for label, paths in summary.samples.items():
        train, test = summary.counts[label]
        st.markdown(f"**{label}** · {train} train, {test} test")
        st.image([service.thumbnail(path, 240) for path in paths], width=120)  # square: the rows line up


render()
