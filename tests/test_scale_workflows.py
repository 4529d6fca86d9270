"""Workflows at scale: the retrieval query sample and its note, label errors through the cached k-NN graph."""

import numpy as np
from test_workflows import make_workspace

from workbench import workflows


def test_retrieval_samples_queries_stratified_and_says_so(tmp_path, tiny_dataset):
    ws = make_workspace(tiny_dataset, tmp_path)
    [full] = workflows.retrieval(ws, ["cosine"], "train")
    assert full.query_pool == 0 and full.note == "" and full.n_truncated == 0  # small: unchanged, nothing to say
    [sampled] = workflows.retrieval(ws, ["cosine"], "train", max_queries=6)
    assert sampled.n_queries + sampled.n_dropped == 6 and sampled.query_pool == len(ws.prepared.split.train)
    assert f"6 of {sampled.query_pool} queries sampled (stratified by label, seeded)" in sampled.note
    [again] = workflows.retrieval(ws, ["cosine"], "train", max_queries=6)
    assert again.metrics == sampled.metrics  # seeded by the workspace: the same sample each time
    [capped] = workflows.retrieval(ws, ["cosine"], "train", max_k=10)
    assert capped.k_searched == 10 and capped.n_truncated == 0  # every label here has at most 11 images
    [tight] = workflows.retrieval(ws, ["cosine"], "train", ks=(1,), max_k=2)
    assert tight.n_truncated == tight.n_queries and "lower bounds" in tight.note


def test_label_errors_build_the_knn_graph_once_and_reuse_it(tmp_path, tiny_dataset, monkeypatch):
    ws = make_workspace(tiny_dataset, tmp_path, noise=0.05)
    first = workflows.label_errors(ws, "cosine", k=10)
    cached = list((ws.layout.dataset_dir / "knn").glob(f"knn-{ws.fingerprint}-cosine-*.npz"))
    assert len(cached) == 1
    graph = workflows.knn(ws, first.k)
    assert graph.k == first.k and not (graph.indices == np.arange(len(ws.embeddings))[:, None]).any()

    def fail(*args, **kwargs):
        raise AssertionError("the k-NN graph was built again")

    monkeypatch.setattr("core.knn.knn_graph", fail)
    assert workflows.label_errors(ws, "cosine", k=10) == first


def test_the_cli_table_states_the_sample_and_its_intervals(tmp_path, tiny_dataset):
    from workbench.cli import _retrieval_table

    ws = make_workspace(tiny_dataset, tmp_path)
    [full] = workflows.retrieval(ws, ["cosine"], "train")
    assert "sampled" not in _retrieval_table([full])
    [sampled] = workflows.retrieval(ws, ["cosine"], "train", max_queries=6)
    table = _retrieval_table([sampled])
    assert f"(6 of {sampled.query_pool} queries sampled (stratified by label, seeded)" in table
    interval = sampled.intervals["map@r"]
    assert f"{sampled.metrics['map@r']:.3f} [{interval.low:.2f}, {interval.high:.2f}]" in table  # in its cell
    assert (
        "(95 % intervals over the queries in brackets: Wilson score for recall@k, bootstrap for MAP@R and MRR)" in table
    )


def test_the_label_error_report_says_how_its_neighbours_were_found(tmp_path, tiny_dataset, monkeypatch):
    ws = make_workspace(tiny_dataset, tmp_path, noise=0.05)
    report = workflows.label_errors(ws, "cosine", k=10)
    assert report.neighbours == "exact" and workflows.label_errors_summary(ws, report)["neighbours"] == "exact"
    monkeypatch.setattr("core.knn.EXACT_MAX_ROWS", 5)  # 18 images: above the limit, clustered
    clustered = workflows.label_errors(make_workspace(tiny_dataset, tmp_path, noise=0.06), "cosine", k=10)
    assert clustered.neighbours == "clustered"
