"""Training page: fine-tune the backbone and fit the SVM ranker, with live progress and curves."""

import streamlit as st

from pages import common
from workbench import service

NO_EPOCHS = "No epoch recorded: this run kept the pretrained weights, so there are no curves."


def _job_panel(job: service.TrainingJob) -> None:
    st.progress(job.fraction, text=f"{job.status} · {job.timing()}")
    if job.history:
        st.plotly_chart(service.training_curves(job.history), key=f"curves_{job.run}_{len(job.history)}")
    if job.error:
        st.error(f"Training failed: {job.error}")
    elif job.done and job.pair_accuracy:
        train, test = job.pair_accuracy
        st.success(
            f"Run {job.run} is ready: pick it as featurizer in the sidebar. SVM balanced pair accuracy (95 % CI in "
            f"brackets): train {train:.1%}, test {test:.1%}."
        )


_SEEN_DONE = "training_seen_done"


def _finished_job_ids() -> set[int]:
    return {id(job) for job in service.training_jobs() if job.done}


@st.fragment(run_every=1.0)
def _live_jobs() -> None:
    for job in reversed(service.training_jobs()):
        _job_panel(job)
    if not _finished_job_ids() <= st.session_state.get(_SEEN_DONE, set()):
        st.rerun(scope="app")  # a run finished: redraw the whole page, so the lists and the sidebar picker show it


_TUNE_SEEN = "tune_seen_done"


@st.fragment(run_every=1.0)
def _live_tune() -> None:
    job = service.tune_job()
    if job is None:
        return
    st.progress(job.fraction, text=f"tune: {job.status}")
    if job.error:
        st.error(f"Tuning failed: {job.error}")
    elif job.report is not None:
        report = job.report
        done = f"Tuned in {report.seconds:.0f} s of {report.budget_s:.0f} s: {report.decision}."
        opens = f" The app opens with {' + '.join(report.choice)}."
        (st.success if report.installed else st.info)(done + opens)
        if report.served_fit_rows:
            st.caption(f"The served {report.choice[1]} ranker is fitted on {report.served_fit_rows} training images.")
        st.dataframe(service.tune_rows(report), hide_index=True, key="tune_table")
        not_done = report.not_done()
        if not_done:
            st.warning("Not tried or not finished:\n" + "\n".join(f"- {line}" for line in not_done))
    if job.done and not st.session_state.get(_TUNE_SEEN):
        st.session_state[_TUNE_SEEN] = True
        st.rerun(scope="app")  # the new default featurizer joins the sidebar picker


def _tune_section() -> None:
    st.subheader("Tune")
    st.caption(
        "Tries the pretrained model and fine-tuning recipes (classification, triplet, multi-similarity, "
        "supervised contrastive), then the best recipe with more epochs, a smaller input and a gentler learning rate, "
        "each with every ranker, scored on a validation share of the training images (the test images are never "
        "used). The budget covers every step; what it leaves out is listed with why. The best replaces the default "
        "featurizer and ranker only if it validates better than the current one."
    )
    left, right = st.columns([1, 3], vertical_alignment="bottom")
    budget = left.number_input("Budget (minutes)", min_value=1, max_value=600, value=15, key="tune_budget")
    if right.button("Start tuning", key="tune_start"):
        st.session_state[_TUNE_SEEN] = False
        service.start_tune(float(budget))
    _live_tune()


def render() -> None:
    st.title("Training")
    common.featurizer_picker()
    st.caption(
        "Fine-tunes the pretrained backbone on the training split (as a classifier, or directly on the embedding "
        "with a metric-learning loss), featurizes with the refined body and fits the SVM-weighted L2 ranker. Runs in the "
        "background; progress updates live."
    )
    st.caption(f"Dataset: `{service.data_folder()}` (switch it on the Dataset page).")
    with st.form("train_form"):
        first = st.columns(4)
        run = first[0].text_input("Run name", value="run1", key="run_name")
        epochs = first[1].number_input(
            "Epochs",
            min_value=1,
            max_value=100,
            value=service.TrainConfig.epochs,
            key="epochs",
            help="at least 1: with 0 the weights stay the pretrained ones, which the 'pretrained' featurizer already is",
        )
        learning_rate = first[2].number_input(
            "Learning rate",
            min_value=1e-5,
            max_value=1.0,
            value=service.TrainConfig.learning_rate,
            format="%.4f",
            key="lr",
        )
        batch_size = first[3].number_input(
            "Batch size", min_value=2, max_value=256, value=service.TrainConfig.batch_size, key="batch"
        )
        second = st.columns(4)
        input_size = second[0].number_input(
            "Input size (0 = model's)", min_value=0, max_value=512, value=0, step=32, key="input_size"
        )
        freeze = second[1].checkbox(
            "Freeze most of the body",
            key="freeze",
            help="train only the body's last stage (and the head): faster, and the embedding still adapts",
        )
        augment = second[2].checkbox("Augment", value=True, key="augment")
        objective = st.selectbox(
            "Objective",
            service.OBJECTIVES,
            key="objective",
            help="classification: cross-entropy on the labels; triplet, multisimilarity, supcon: metric-learning "
            "losses on the embedding itself (mined triplets; every pair of a batch; supervised contrastive)",
        )
        svm_c = second[3].number_input(
            "SVM C", min_value=1e-4, max_value=100.0, value=service.SVMConfig.C, format="%.4f", key="svm_c"
        )
        submitted = st.form_submit_button("Start training")
    if submitted:
        config = service.train_config(
            epochs=int(epochs),
            learning_rate=float(learning_rate),
            batch_size=int(batch_size),
            input_size=int(input_size),
            freeze_body=freeze,
            augment=augment,
            objective=objective,
        )
        try:
            service.start_training(run.strip(), config, service.SVMConfig(C=float(svm_c)))
        except service.WorkbenchError as err:
            st.error(str(err))
    st.session_state[_SEEN_DONE] = _finished_job_ids()  # this full run draws them in the lists below
    _live_jobs()

    _tune_section()

    st.subheader("Finished runs")
    runs = [choice for choice in service.featurizer_choices() if choice != service.PRETRAINED]
    if not runs:
        st.info("No fine-tuned run yet.")
    for run_name in runs:
        with st.expander(run_name):
            history = service.run_history(run_name)
            if history:
                st.plotly_chart(service.training_curves(history), key=f"history_{run_name}")
            else:
                st.caption(NO_EPOCHS)


render()
