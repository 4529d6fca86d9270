"""The folder catalogue: it follows the folder (added, removed, rewritten, moved photos), reads only what changed,
and the split it feeds keeps every photo on its side when others are added."""

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.catalogue import load_catalogue, refresh_catalogue, refresh_saved_catalogue, save_catalogue
from core.data import content_split, scan_folder


@pytest.fixture
def folder(tmp_path, tiny_dataset) -> Path:
    root = tmp_path / "photos"
    shutil.copytree(tiny_dataset, root)
    return root


def photos(root: Path) -> list[Path]:
    return sorted(root.glob("*/*.jpg"))


def test_first_refresh_reads_every_file_and_reports_what_a_scan_reports(folder):
    (folder / "fish" / "notes.txt").write_text("not a photo")
    (folder / "fish" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    shutil.copy(photos(folder)[0], folder / "tools" / "zz_copy.jpg")  # an exact duplicate, in another label
    catalogue, changes = refresh_catalogue(folder)
    assert changes.first and changes.read == len(photos(folder))
    scanned, catalogued = scan_folder(folder), catalogue.scan_report()
    assert catalogued.dataset == scanned.dataset
    assert sorted(item.reason for item in catalogued.skipped) == sorted(item.reason for item in scanned.skipped)
    np.testing.assert_array_equal(catalogued.dhashes, scanned.dhashes)


def test_a_second_refresh_reads_nothing_and_sees_no_change(folder, tmp_path):
    saved = tmp_path / "catalogue.npz"
    first, _ = refresh_saved_catalogue(folder, saved)
    again, changes = refresh_saved_catalogue(folder, saved)
    assert not changes and changes.read == 0 and not changes.first
    assert again.scan_report().dataset == first.scan_report().dataset


def test_added_removed_rewritten_and_moved_photos_are_told_apart_and_only_new_content_is_read(folder, tmp_path):
    saved = tmp_path / "catalogue.npz"
    before, _ = refresh_saved_catalogue(folder, saved)
    fish, landmarks, tools = (sorted((folder / label).glob("*.jpg")) for label in ("fish", "landmarks", "tools"))
    outside = tmp_path / "outside.jpg"
    shutil.copy(fish[0], outside)
    fish[0].unlink()  # removed
    shutil.copy(outside, folder / "fish" / "new.jpg")  # ...and its content comes back under a new name: moved
    landmarks[0].rename(folder / "tools" / landmarks[0].name)  # moved to another label, same inode: not read
    tools[0].write_bytes(tools[1].read_bytes() + b"trailer")  # rewritten in place: new content
    shutil.copy(landmarks[1], folder / "landmarks" / "zz_added.jpg")
    os.utime(folder / "landmarks" / "zz_added.jpg", ns=(1, 1))  # content of an existing photo: a duplicate
    removed = fish[1]
    removed.unlink()

    after, changes = refresh_saved_catalogue(folder, saved)
    rel = lambda path: str(path.relative_to(folder))  # noqa: E731
    assert changes.removed == (rel(removed),)
    assert changes.rewritten == (rel(tools[0]),)
    assert set(changes.moved) == {
        (rel(fish[0]), "fish/new.jpg"),
        (rel(landmarks[0]), f"tools/{landmarks[0].name}"),
    }
    assert changes.added == ()  # zz_added.jpg repeats landmarks[1]'s content: the dataset keeps one of them
    assert changes.read == 3  # new.jpg (a copy, new inode), added.jpg and the rewritten file; not the renamed one
    assert changes.summary() == "1 removed, 1 rewritten, 2 moved"
    labels = {record.path.name: record.label for record in after.scan_report().dataset.records}
    assert labels[landmarks[0].name] == "tools" and removed.name not in labels
    assert len(after.scan_report().dataset) == len(before.scan_report().dataset) - 1


def test_a_quick_refresh_sees_added_and_removed_photos_through_folder_times(folder, tmp_path):
    saved = tmp_path / "catalogue.npz"
    refresh_saved_catalogue(folder, saved)
    shutil.copy(photos(folder)[0], folder / "fish" / "z.jpg")
    (folder / "fish" / "z.jpg").write_bytes((folder / "fish" / "z.jpg").read_bytes() + b"\0")
    _, changes = refresh_saved_catalogue(folder, saved, deep=False)
    assert changes.added == ("fish/z.jpg",) and changes.read == 1
    _, unchanged = refresh_saved_catalogue(folder, saved, deep=False)
    assert not unchanged and unchanged.read == 0


def test_a_quick_refresh_trusts_folder_times_and_a_deep_one_finds_a_photo_rewritten_in_place(folder, tmp_path):
    saved = tmp_path / "catalogue.npz"
    refresh_saved_catalogue(folder, saved)
    target = photos(folder)[0]
    times = os.stat(target.parent)
    target.write_bytes(photos(folder)[1].read_bytes() + b"trailer")
    os.utime(target.parent, ns=(times.st_atime_ns, times.st_mtime_ns))  # writing a file never changes its folder
    assert not refresh_saved_catalogue(folder, saved, deep=False)[1]
    assert refresh_saved_catalogue(folder, saved, deep=True)[1].rewritten == (str(target.relative_to(folder)),)


def test_a_damaged_catalogue_is_ignored_with_a_warning_and_the_folder_read_again(folder, tmp_path, caplog):
    saved = tmp_path / "catalogue.npz"
    refresh_saved_catalogue(folder, saved)
    saved.write_bytes(saved.read_bytes()[:300])
    with caplog.at_level(logging.WARNING):
        catalogue, changes = refresh_saved_catalogue(folder, saved)
    assert changes.first and changes.read == len(photos(folder))
    assert "catalogue.npz: unusable catalogue, ignored" in caplog.text
    reloaded = load_catalogue(saved)  # written anew, whole
    assert reloaded is not None and reloaded.paths == catalogue.paths and reloaded.sha256 == catalogue.sha256


def test_undecodable_file_names_survive_a_save_and_load(tmp_path, tiny_dataset):
    root = tmp_path / "photos"
    (root / "caf\udce9").mkdir(parents=True) if os.name != "nt" else None
    (root / "plain").mkdir()
    source = sorted(tiny_dataset.glob("*/*.jpg"))
    for index, path in enumerate(source[:4]):
        shutil.copy(path, root / ("caf\udce9" if index % 2 else "plain") / f"ph\udcf6to{index}.jpg")
    catalogue, _ = refresh_catalogue(root)
    save_catalogue(catalogue, tmp_path / "c.npz")
    loaded = load_catalogue(tmp_path / "c.npz")
    assert loaded is not None
    assert loaded.paths == catalogue.paths and loaded.labels == catalogue.labels
    assert loaded.sha256 == catalogue.sha256
    np.testing.assert_array_equal(loaded.dhash, catalogue.dhash)
    assert not refresh_catalogue(root, loaded)[1]


def _position_reference(sha256: str, seed: int) -> float:
    """splitmix64 on Python integers, one hash at a time."""
    mask = (1 << 64) - 1
    x = int(sha256[:16], 16) ^ ((0x9E3779B97F4A7C15 * (seed + 1)) & mask)
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & mask
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & mask
    x ^= x >> 31
    return (x >> 11) / float(1 << 53)


def _hashes(rng: np.random.Generator, n: int) -> list[str]:
    return [bytes(row).hex() for row in rng.integers(0, 256, size=(n, 32), dtype=np.uint8)]


def test_content_split_follows_the_hash_rule_of_a_reference_loop():
    rng = np.random.default_rng(0)
    shas = _hashes(rng, 400)
    labels = np.repeat(["a", "b", "c", "d"], 100)
    split = content_split(shas, labels, 0.75, seed=3)
    expected_train = [i for i, sha in enumerate(shas) if _position_reference(sha, 3) < 0.75]
    np.testing.assert_array_equal(split.train, expected_train)  # labels of 100 need no guarantee to step in
    assert sorted([*split.train, *split.test]) == list(range(400))
    assert 0.68 < len(split.train) / 400 < 0.82


def test_photos_added_later_move_no_other_photo_across_the_split():
    rng = np.random.default_rng(1)
    shas = _hashes(rng, 600)
    labels = np.repeat(["a", "b", "c"], 200)
    before = content_split(shas[:500], labels[:500], 0.75, seed=0)
    after = content_split(shas, labels, 0.75, seed=0)
    in_test_before = set(before.test.tolist())
    assert in_test_before == {i for i in after.test.tolist() if i < 500}
    other_seed = content_split(shas, labels, 0.75, seed=1)
    assert set(other_seed.test.tolist()) != set(after.test.tolist())


def test_small_labels_keep_an_image_on_each_side():
    rng = np.random.default_rng(2)
    labels = np.array(["a"] * 2 + ["b"] * 3 + ["c"] * 4 + ["d"])
    for seed in range(20):
        split = content_split(_hashes(rng, len(labels)), labels, 0.75, seed)
        for label in ("a", "b", "c"):
            assert (labels[split.train] == label).any() and (labels[split.test] == label).any()
        assert "d" in labels[split.train]


def test_content_split_refuses_misaligned_inputs():
    with pytest.raises(ValueError, match="2 content hashes but 3 labels"):
        content_split(["0" * 64, "1" * 64], ["a", "b", "c"], 0.5, 0)
    with pytest.raises(ValueError, match="train_fraction"):
        content_split(["0" * 64], ["a"], 1.0, 0)


def test_a_file_rewritten_within_the_same_clock_tick_as_the_listing_is_read_again(folder, tmp_path):
    target = photos(folder)[0]
    target.write_bytes(target.read_bytes() + b"A")  # written just now: racily clean when catalogued at once
    stat = os.stat(target)
    catalogue, _ = refresh_catalogue(folder)
    target.write_bytes(target.read_bytes()[:-1] + b"B")  # same size, new content...
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ...and the same time: the tick had not moved on
    _, changes = refresh_catalogue(folder, catalogue)
    assert changes.rewritten == (str(target.relative_to(folder)),) and changes.read == 1
