"""Near-duplicates (dhash 16 and embeddings): distances and neighbour searches vs loops, groups that cannot chain,
planted copies, the --apply guard, leakage counts, the CLI."""

import json
import logging

import numpy as np
import pytest
from planted import EASY, plant

from core.data import DUPLICATES_DIR, scan_folder
from core.dedup import (
    LEAK_SAMPLE,
    DedupConfig,
    LeakReport,
    apply_refusal,
    close_pairs,
    closest_per_query,
    find_leaks,
    find_near_duplicates,
    group_labels,
    hamming_distances,
    hash_neighbours,
    leaks_from_json,
    leaks_to_json,
    move_duplicates,
    star_groups,
)
from core.workdir import WorkDir
from workbench.cli import main


def test_hamming_distances_match_a_loop_and_blocks_match_one_pass():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 256, size=(23, 32), dtype=np.uint8)
    hashes[5] = hashes[3] ^ np.eye(1, 32, 7, dtype=np.uint8)[0]  # one bit apart
    loop = np.array(
        [
            [bin(int.from_bytes(a.tobytes(), "big") ^ int.from_bytes(b.tobytes(), "big")).count("1") for b in hashes]
            for a in hashes
        ]
    )
    np.testing.assert_array_equal(hamming_distances(hashes, hashes), loop)
    one_pass = close_pairs(hashes, hashes, 120)
    blocked = close_pairs(hashes, hashes, 120, block_rows=4)
    for a, b in zip(one_pass, blocked, strict=True):
        np.testing.assert_array_equal(a, b)
    assert loop[3, 5] == 1


def test_group_labels_match_union_find():
    rng = np.random.default_rng(1)
    n = 60
    i, j = rng.integers(0, n, 40), rng.integers(0, n, 40)
    parent = list(range(n))

    def root(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in zip(i, j, strict=True):
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)
    expected = [min(k for k in range(n) if root(k) == root(x)) for x in range(n)]
    np.testing.assert_array_equal(group_labels(n, i, j), expected)


@pytest.fixture
def planted_folder(tmp_path, tiny_dataset):
    sources = sorted(tiny_dataset.glob("*/*.jpg"))
    variants = [name for name in EASY for _ in range(2)]
    return tmp_path / "data", plant(sources, tmp_path / "data", variants, np.random.default_rng(0))


def test_planted_near_duplicates_are_found_and_the_original_kept(planted_folder):
    root, planted = planted_folder
    scan = scan_folder(root)
    exact = {item.path for item in scan.skipped if "exact duplicate" in item.reason}
    report = find_near_duplicates(scan.dataset, scan.dhashes, DedupConfig(hash_threshold=32))
    removed = {item.removed: item for item in report.removed}
    missed = [(copy.name, variant) for original, copy, variant in planted if copy not in removed and copy not in exact]
    # dhash's known weak spot: a low-texture photo (the Burj against a flat sky) whose horizontal gradients are
    # mostly JPEG noise; at quality 30 its copy is 57 bits away (q=70: 37, q=90: 13). Everything else is found.
    assert missed == [("zz-003-jpeg_q30-gc_burj.jpg", "jpeg_q30")]
    assert len(removed) == len(planted) - len(exact) - len(missed)  # no distinct photo removed
    for original, copy, _variant in planted:
        if copy in removed:
            assert removed[copy].kept == original and removed[copy].distance <= report.threshold
    assert json.loads(json.dumps(report.to_dict()))["n_removed"] == len(removed)


def test_move_duplicates_sets_them_aside_and_the_scan_ignores_them(planted_folder):
    root, _ = planted_folder
    scan = scan_folder(root)
    report = find_near_duplicates(scan.dataset, scan.dhashes)
    moved = move_duplicates(report, root)
    assert len(moved) == len(report.removed)
    assert all(new.is_file() and not old.exists() and DUPLICATES_DIR in new.parts for old, new in moved)
    assert len(scan_folder(root).dataset) == len(scan.dataset) - len(moved)


def test_leaks_are_found_and_prepare_warns_once_with_the_count(tmp_path, tiny_dataset, caplog):
    from core.config import DataConfig
    from core.pipeline import prepare

    root = tmp_path / "data"
    for path in sorted(tiny_dataset.glob("*/*.jpg")):
        (root / path.parent.name).mkdir(parents=True, exist_ok=True)
        (root / path.parent.name / path.name).write_bytes(path.read_bytes())
    plant([tiny_dataset / "fish" / "gc_fish1.jpg"], root, ["half_size", "jpeg_q30", "png"], np.random.default_rng(0))
    with caplog.at_level(logging.WARNING):
        prepared = prepare(DataConfig(root=root, seed=0, train_fraction=0.5))
    scan = scan_folder(root)
    report = find_leaks(prepared.dataset, prepared.split, scan.dhashes, prepared.config.near_duplicate_threshold)
    leaks = report.sample
    assert leaks and report.count == len(leaks)  # 4 versions of one photo in a 9-image label, split between sides
    assert prepared.leaks == report
    train = {prepared.dataset.records[i].path for i in prepared.split.train}
    for leak in leaks:
        assert leak.train_path in train and leak.test_path not in train
    warnings = [r.getMessage() for r in caplog.records if "leakage" in r.getMessage()]
    assert len(warnings) == 1  # one summary line, not one per pair
    assert f"{report.count} near-duplicate pair(s) straddle the split" in warnings[0] and "prepared.json" in warnings[0]
    closest = min(leaks, key=lambda leak: leak.distance)
    assert leaks[0].distance == closest.distance  # closest first
    assert f"{closest.test_path} (test) ~ {closest.train_path} (train)" in warnings[0]
    assert "gc_fish1" in leaks[0].train_path.name + leaks[0].test_path.name
    from workbench.views import dataset_summary

    summary = dataset_summary(prepared)  # what the Dataset page shows: the count and the closest pairs
    assert summary.n_leaks == report.count and len(summary.leaks) == len(report.sample)
    assert summary.leaks[0].endswith(f"distance {leaks[0].distance}")


def test_cli_dedup_reports_then_applies(planted_folder, tmp_path, capsys):
    root, _ = planted_folder
    work = tmp_path / "work"
    assert main(["prepare", "--data", str(root), "--workdir", str(work), "--quiet"]) == 0
    layout = WorkDir(work, root)
    n_before = json.loads(layout.prepared.read_text())["counts"]["images"]
    assert main(["dedup", "--data", str(root), "--workdir", str(work), "--quiet"]) == 0
    out = capsys.readouterr().out
    report = json.loads(layout.dedup_report.read_text())
    assert f"{report['n_removed']} near-duplicate(s)" in out and "add --apply" in out and not report["applied"]
    assert not (root / DUPLICATES_DIR).exists()
    # a third of this folder is planted copies: above the default share --apply moves without asking
    assert main(["dedup", "--data", str(root), "--workdir", str(work), "--apply", "--quiet"]) == 2
    assert not (root / DUPLICATES_DIR).exists()
    assert main(["dedup", "--data", str(root), "--workdir", str(work), "--apply", "--max-share", "0.5", "--quiet"]) == 0
    assert "prepared.json rebuilt" in capsys.readouterr().out
    assert json.loads(layout.prepared.read_text())["counts"]["images"] == n_before - report["n_removed"]
    assert main(["dedup", "--data", str(root), "--workdir", str(work), "--threshold", "300", "--quiet"]) == 2


def _flip(hash_row, bits):
    """A copy of a packed hash row with the given bit positions flipped."""
    unpacked = np.unpackbits(hash_row)
    unpacked[list(bits)] ^= 1
    return np.packbits(unpacked)


def _dataset(n, labels=None):
    from pathlib import Path

    from core.data import ImageDataset, ImageRecord

    labels = labels or ["a"] * n
    return ImageDataset(
        tuple(ImageRecord(Path(f"/d/{labels[k]}/{k:03d}.png"), labels[k], "") for k in range(n)), Path("/d")
    )


def test_a_chain_is_not_removed_as_a_duplicate_of_its_far_end():
    a = np.zeros(32, np.uint8)
    b = _flip(a, range(0, 20))  # A~B: 20 bits
    c = _flip(b, range(100, 120))  # B~C: 20 bits, A~C: 40 bits > 32
    hashes = np.stack([a, b, c])
    assert hamming_distances(hashes, hashes).tolist() == [[0, 20, 40], [20, 0, 20], [40, 20, 0]]
    report = find_near_duplicates(_dataset(3), hashes, DedupConfig(hash_threshold=32))
    assert [(item.kept.name, item.removed.name, item.distance) for item in report.removed] == [
        ("000.png", "001.png", 20)
    ]
    assert report.n_groups == 1 and report.largest_group == 2 and report.n_flagged == 2
    # the connected components of the old rule put C with A, 40 bits away
    assert group_labels(3, np.array([0, 1]), np.array([1, 2])).tolist() == [0, 0, 0]


def test_star_groups_match_a_greedy_loop_and_never_chain():
    rng = np.random.default_rng(3)
    for n, m in [(1, 0), (5, 0), (30, 40), (80, 200)]:
        i, j = rng.integers(0, n, m), rng.integers(0, n, m)
        adjacent = [set() for _ in range(n)]
        for a, b in zip(i.tolist(), j.tolist(), strict=True):
            if a != b:
                adjacent[a].add(b)
                adjacent[b].add(a)
        keeper = [-1] * n
        for node in range(n):  # reference: visit in order, keep the unassigned, take their unassigned neighbours
            if keeper[node] < 0:
                keeper[node] = node
                for other in sorted(adjacent[node]):
                    if keeper[other] < 0:
                        keeper[other] = node
        got = star_groups(n, i, j)
        assert got.tolist() == keeper
        for node in range(n):
            assert got[node] == node or got[node] in adjacent[node]  # a removed node is adjacent to its kept node
            assert got[got[node]] == got[node]  # a kept node keeps itself: no chains


def test_hash_neighbours_exact_match_a_loop_with_and_without_faiss(monkeypatch):
    import core.dedup as dedup_module

    rng = np.random.default_rng(4)
    hashes = rng.integers(0, 256, size=(300, 32), dtype=np.uint8)
    for n in range(0, 60, 3):  # near copies: each of the first 20 rows gets copies 5-20 bits away
        hashes[100 + n] = _flip(hashes[n % 20], rng.choice(256, rng.integers(5, 21), replace=False))
    distances = hamming_distances(hashes, hashes)
    k, threshold = 2, 24
    expected = set()
    for q in range(len(hashes)):
        close = sorted((int(distances[q, r]), r) for r in range(len(hashes)) if r != q and distances[q, r] <= threshold)
        expected |= {(q, r, d) for d, r in close[:k]}
    (query, reference, distance), searched = hash_neighbours(hashes, None, threshold, k, search="exact")
    assert (
        searched == "exact" and set(zip(query.tolist(), reference.tolist(), distance.tolist(), strict=True)) == expected
    )
    monkeypatch.setattr(dedup_module, "_faiss", lambda: None)
    (query2, reference2, distance2), _ = hash_neighbours(hashes, None, threshold, k, search="exact")
    for a, b in [(query, query2), (reference, reference2), (distance, distance2)]:
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="needs faiss"):
        hash_neighbours(hashes, None, threshold, k, search="ivf")


def test_hash_neighbours_ivf_verifies_every_pair_and_finds_nearly_all():
    rng = np.random.default_rng(5)
    hashes = rng.integers(0, 256, size=(2000, 32), dtype=np.uint8)
    copies = np.stack([_flip(hashes[n], rng.choice(256, 12, replace=False)) for n in range(200)])
    hashes = np.concatenate([hashes, copies])
    (query, reference, distance), searched = hash_neighbours(hashes, None, 24, 4, search="ivf")
    assert searched == "ivf"
    np.testing.assert_array_equal(distance, hamming_distances(hashes, hashes)[query, reference])  # exact distances
    assert (distance <= 24).all() and (query != reference).all()
    found = set(zip(query.tolist(), reference.tolist(), strict=True))
    recall = np.mean([(n, 2000 + n) in found for n in range(200)])
    assert recall >= 0.9, recall


def test_closest_per_query_keeps_the_k_closest_with_ties_to_the_lower_index():
    query = np.array([1, 0, 1, 1, 0, 1])
    reference = np.array([7, 3, 5, 2, 9, 9])
    distance = np.array([3, 4, 3, 8, 1, 0])
    q, r, d = closest_per_query(query, reference, distance, 2)
    assert list(zip(q.tolist(), r.tolist(), d.tolist(), strict=True)) == [(0, 9, 1), (0, 3, 4), (1, 9, 0), (1, 5, 3)]


def test_embedding_and_both_methods_find_what_the_hash_misses():
    # photos 0-1: same hash, unrelated embeddings; 2-3: far hashes, near-identical embeddings; 4: alone
    rng = np.random.default_rng(6)
    hashes = rng.integers(0, 256, size=(5, 32), dtype=np.uint8)
    hashes[1] = hashes[0]
    embeddings = np.eye(5, 8, dtype=np.float32)
    embeddings[3] = embeddings[2] * 0.99 + embeddings[4] * 0.141  # cosine(2, 3) ~ 0.99
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    dataset = _dataset(5)

    def removed(method):
        report = find_near_duplicates(dataset, hashes, DedupConfig(method=method, cosine_threshold=0.95), embeddings)
        return [(item.kept.name, item.removed.name) for item in report.removed], report

    assert removed("hash")[0] == [("000.png", "001.png")]
    assert removed("embedding")[0] == [("002.png", "003.png")]
    pairs, report = removed("both")
    assert pairs == [("000.png", "001.png"), ("002.png", "003.png")]
    assert report.removed[0].distance == 0 and report.removed[0].cosine == pytest.approx(0.0, abs=1e-6)
    assert report.removed[1].cosine == pytest.approx(float(embeddings[2] @ embeddings[3]), abs=1e-6)
    with pytest.raises(ValueError, match="needs embeddings"):
        find_near_duplicates(dataset, hashes, DedupConfig(method="both"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "pixels"}, "dedup method 'pixels'"),
        ({"hash_threshold": 300}, "between 0 and 256 bits"),
        ({"cosine_threshold": 1.5}, "between -1 and 1"),
        ({"neighbours": 0}, "neighbours must be at least 1"),
        ({"search": "bk-tree"}, "hash search 'bk-tree'"),
    ],
)
def test_bad_dedup_settings_are_refused_in_one_line(settings, message):
    with pytest.raises(ValueError, match=message):
        DedupConfig(**settings)


def test_apply_is_refused_for_a_large_share_or_across_labels():
    hashes = np.zeros((10, 32), np.uint8)
    for n in range(10):
        hashes[n, n] = 255  # every pair 16 bits apart
    hashes[1] = hashes[0]
    labels = ["a", "a", "b"] + ["c"] * 7
    report = find_near_duplicates(_dataset(10, labels), hashes, DedupConfig(hash_threshold=8))
    assert len(report.removed) == 1 and not report.cross_label
    assert apply_refusal(report, max_share=0.1) == ""
    assert "1 of 10 photos (10.0%) would be moved" in apply_refusal(report, max_share=0.05)
    hashes[2] = hashes[0]  # a copy filed under another label
    report = find_near_duplicates(_dataset(10, labels), hashes, DedupConfig(hash_threshold=8))
    refusal = apply_refusal(report, max_share=0.5)
    assert "1 removal(s) cross labels" in refusal and "[b] ~ a/000.png [a]" in refusal
    assert apply_refusal(report, max_share=0.5, allow_cross_label=True) == ""


def test_leak_report_keeps_a_capped_sample_and_reads_the_older_list(tmp_path):
    from core.data import Split

    rng = np.random.default_rng(7)
    n = 2 * (LEAK_SAMPLE + 5)
    hashes = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    hashes[n // 2 :] = hashes[: n // 2]  # test photo t copies training photo t
    for t in range(n // 2):
        hashes[n // 2 + t] = _flip(hashes[t], range(t % 9))  # t % 9 bits apart
    dataset = _dataset(n)
    split = Split(np.arange(n // 2), np.arange(n // 2, n))
    report = find_leaks(dataset, split, hashes, threshold=8)
    assert report.count == n // 2 and len(report.sample) == LEAK_SAMPLE
    assert [leak.distance for leak in report.sample] == sorted(leak.distance for leak in report.sample)
    assert report.sample[0].distance == 0
    everything = find_leaks(dataset, split, hashes, threshold=8, sample_size=None)
    assert len(everything.sample) == everything.count == n // 2
    root = dataset.root
    stored = json.loads(json.dumps(leaks_to_json(report, root)))
    assert leaks_from_json(stored, root) == report
    older = [
        [str(leak.train_path.relative_to(root)), str(leak.test_path.relative_to(root)), leak.distance]
        for leak in everything.sample
    ]
    assert leaks_from_json(older, root) == LeakReport(n // 2, 32, report.sample)
    shuffled = leaks_from_json(older[::-1], root)  # the older list is sorted on reading: the closest are kept
    assert [leak.distance for leak in shuffled.sample] == [leak.distance for leak in report.sample]
    assert leaks_from_json(None, root) == LeakReport()
    with pytest.raises(ValueError, match="count 1 below the 2 pairs"):
        leaks_from_json({"count": 1, "threshold": 8, "sample": older[:2]}, root)


def test_cli_apply_refuses_a_loose_threshold_and_moves_nothing(planted_folder, tmp_path, caplog):
    root, _ = planted_folder
    work = tmp_path / "work"
    before = sorted(root.rglob("*.*"))
    code = main(["dedup", "--data", str(root), "--workdir", str(work), "--threshold", "120", "--apply", "--quiet"])
    assert code == 2
    refusal = [record.getMessage() for record in caplog.records if "not moved:" in record.getMessage()]
    assert len(refusal) == 1 and "--max-share" in refusal[0] and "--allow-cross-label" in refusal[0]
    assert sorted(root.rglob("*.*")) == before and not (root / DUPLICATES_DIR).exists()
    report = json.loads(WorkDir(work, root).dedup_report.read_text())
    assert report["refused"] and not report["applied"] and report["removed_share"] > 0.05


def test_cli_embedding_method_finds_planted_copies_on_real_photos(tmp_path, tiny_dataset, capsys):
    sources = sorted(tiny_dataset.glob("*/*.jpg"))
    root = tmp_path / "data"
    planted = plant(sources, root, ["crop_3pct", "colour_shift", "brighter_20pct"], np.random.default_rng(1))
    work = tmp_path / "work"
    common = ["--data", str(root), "--workdir", str(work), "--backend", "torch", "--device", "cpu", "--quiet"]
    assert main(["dedup", "--method", "embedding", "--cosine", "0.95", *common]) == 0
    report = json.loads(WorkDir(work, root).dedup_report.read_text())
    assert report["method"] == "embedding" and report["cosine_threshold"] == 0.95
    removed = {row["removed"]: row for row in report["removed"]}
    for original, copy, _variant in planted:
        row = removed[str(copy.relative_to(root))]
        assert row["kept"] == str(original.relative_to(root)) and row["cosine"] >= 0.95
        assert isinstance(row["distance"], int)  # both kinds of evidence are reported
    assert len(removed) == len(planted)  # no distinct photo of the tiny set is this close
    assert max(row["distance"] for row in removed.values()) > 32  # the crop: a copy the hash alone would miss
    assert "cos " in capsys.readouterr().out


def test_cli_dedup_leaks_writes_every_pair_that_prepare_counted(tmp_path, tiny_dataset, capsys):
    root = tmp_path / "data"
    sources = sorted(tiny_dataset.glob("*/*.jpg"))
    plant(sources, root, ["png", "half_size", "double_size"] * 4, np.random.default_rng(2))
    work = tmp_path / "work"
    common = ["--data", str(root), "--workdir", str(work), "--quiet"]
    assert main(["prepare", *common]) == 0
    layout = WorkDir(work, root)
    stored = json.loads(layout.prepared.read_text())["leaks"]
    assert stored["count"] > 0 and len(stored["sample"]) == min(stored["count"], LEAK_SAMPLE)
    assert main(["dedup", "--leaks", "--threshold", str(stored["threshold"]), *common]) == 0
    assert f"{stored['count']} near-duplicate pair(s) across the train/test split" in capsys.readouterr().out
    listed = json.loads(layout.dedup_report.with_name("leaks.json").read_text())
    assert listed["count"] == len(listed["pairs"]) == stored["count"]
    closest = [[pair["train"], pair["test"], pair["distance"]] for pair in listed["pairs"]][: len(stored["sample"])]
    assert closest == stored["sample"]


def test_pair_cosines_in_blocks_match_one_pass():
    from core.dedup import pair_cosines

    rng = np.random.default_rng(8)
    embeddings = rng.normal(size=(40, 16)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    i, j = rng.integers(0, 40, 101), rng.integers(0, 40, 101)
    loop = [float(embeddings[a] @ embeddings[b]) for a, b in zip(i, j, strict=True)]
    np.testing.assert_allclose(pair_cosines(embeddings, i, j, block=7), loop, atol=1e-6)
    np.testing.assert_allclose(pair_cosines(embeddings, i, j), loop, atol=1e-6)


def test_auto_search_switches_to_ivf_above_the_exact_budget(monkeypatch):
    import core.dedup as dedup_module

    rng = np.random.default_rng(9)
    hashes = rng.integers(0, 256, size=(700, 32), dtype=np.uint8)
    hashes[1] = _flip(hashes[0], range(3))
    assert hash_neighbours(hashes, None, 8, 3)[1] == "exact"  # 700 x 700 comparisons: within the budget
    monkeypatch.setattr(dedup_module, "EXACT_MAX_PAIRS", 1000)
    (query, reference, distance), searched = hash_neighbours(hashes, None, 8, 3)
    assert searched == "ivf"
    assert {(0, 1, 3), (1, 0, 3)} <= set(zip(query.tolist(), reference.tolist(), distance.tolist(), strict=True))
    report = find_near_duplicates(_dataset(700), hashes, DedupConfig(hash_threshold=8))
    assert report.hash_search == "ivf" and [item.removed.name for item in report.removed] == ["001.png"]


def test_a_given_cosine_graph_gives_the_same_pairs_and_another_ranker_is_refused():
    import dataclasses

    from core.dedup import embedding_neighbours
    from core.knn import knn_graph

    rng = np.random.default_rng(10)
    embeddings = rng.normal(size=(60, 8)).astype(np.float32)
    embeddings[30:40] = embeddings[:10] + 0.05 * rng.normal(size=(10, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    graph = knn_graph(embeddings, 15)  # more neighbours than asked: the first k are used
    built = embedding_neighbours(embeddings, 0.9, 4)
    given = embedding_neighbours(embeddings, 0.9, 4, graph)
    for a, b in zip(built, given, strict=True):
        np.testing.assert_array_equal(a, b)
    assert {(n, 30 + n) for n in range(10)} <= set(zip(built[0].tolist(), built[1].tolist(), strict=True))
    with pytest.raises(ValueError, match="cosine k-NN graph of the 60 embeddings, got a l2 graph"):
        embedding_neighbours(embeddings, 0.9, 4, dataclasses.replace(graph, ranker="l2"))
