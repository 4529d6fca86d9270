"""The feature cache after a folder change costs O(changes): sorted hashes searched in each file (no table of every
row), new embeddings saved as small parts, the main file left alone until the parts are a quarter of it, records kept
as columns never iterated; checked against a dictionary built by a loop."""

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.artifacts import atomic_save_npz
from core.data import RecordColumns
from core.featurize import MAX_PARTS, MERGE_SHARE, FeatureCache, Hashes, mapped_npz_member
from core.images import content_hash
from core.preprocessing import Preprocessing

DIM = 8


class MeanColour:
    fingerprint = "mean-colour"
    preprocessing = Preprocessing(16, 16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    def __init__(self) -> None:
        self.calls = 0

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        self.calls += len(pixels)
        rows = np.zeros((len(pixels), DIM), np.float32)
        rows[:, :3] = pixels.astype(np.float32).mean((1, 2)) + 1.0
        return rows


def sha(number: int) -> str:
    return hashlib.sha256(str(number).encode()).hexdigest()


def filled_cache(folder: Path, n: int, rng: np.random.Generator) -> tuple[FeatureCache, list[str], np.ndarray]:
    """A cache whose main file holds ``n`` rows, unsorted as older versions wrote them."""
    hashes = [sha(number) for number in range(n)]
    rows = rng.standard_normal((n, DIM)).astype(np.float32)
    cache = FeatureCache(folder / "features")
    atomic_save_npz(cache.path_for(MeanColour.fingerprint), sha256=np.array(hashes), embeddings=rows)
    return cache, hashes, rows


def photos(folder: Path, numbers: range) -> tuple[list[str], list[str]]:
    paths, hashes = [], []
    for number in numbers:
        path = folder / "new" / f"{number}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), (number % 256, 40, 200)).save(path)
        paths.append(f"new/{number}.png")
        hashes.append(content_hash(path.read_bytes()))
    return paths, hashes


class Columns(RecordColumns):
    """Records as columns that fail if iterated whole and count the records made."""

    made = 0

    def __iter__(self):
        raise AssertionError("iterated every record")

    def __getitem__(self, index):
        Columns.made += 1
        return super().__getitem__(index)


def reference(cache: FeatureCache, fingerprint: str, wanted: list[str]) -> np.ndarray:
    """The rows by a loop over every file into a dictionary (later files win), as the cache once did."""
    table: dict[str, np.ndarray] = {}
    for path in [cache.path_for(fingerprint), *cache.part_paths(fingerprint)]:
        with np.load(path) as archive:
            for key, row in zip(archive["sha256"].tolist(), archive["embeddings"], strict=True):
                table[key] = row
    return np.stack([table[key] for key in wanted])


def test_a_change_writes_a_small_part_and_leaves_the_main_file(tmp_path):
    cache, hashes, rows = filled_cache(tmp_path, 5_000, np.random.default_rng(0))
    main = cache.path_for(MeanColour.fingerprint)
    before = main.stat()
    new_paths, new_hashes = photos(tmp_path, range(3))
    order = np.random.default_rng(1).permutation(5_003)
    paths = [f"old/{number}.png" for number in range(5_000)] + new_paths
    records = Columns(tmp_path, [paths[i] for i in order], ["a"] * 5_003, [(hashes + new_hashes)[i] for i in order])
    Columns.made = 0
    featurizer = MeanColour()
    got = cache.embed(featurizer, records)
    assert featurizer.calls == 3 and Columns.made == 3  # only the new photos became records
    assert (main.stat().st_mtime_ns, main.stat().st_ino) == (before.st_mtime_ns, before.st_ino)  # not rewritten
    (part,) = cache.part_paths(MeanColour.fingerprint)
    with np.load(part) as archive:
        assert sorted(archive["sha256"].tolist()) == sorted(new_hashes) and archive["sha256"].tolist() == sorted(
            new_hashes
        )
    np.testing.assert_array_equal(got, reference(cache, MeanColour.fingerprint, list(records.sha256s)))
    np.testing.assert_array_equal(got[np.argsort(order)[:5_000]], rows)
    again = MeanColour()
    np.testing.assert_array_equal(cache.embed(again, records), got)
    assert again.calls == 0 and len(cache.part_paths(MeanColour.fingerprint)) == 1


def test_parts_merge_into_one_above_the_part_limit_and_into_the_main_file_at_a_quarter(tmp_path):
    cache, hashes, _ = filled_cache(tmp_path, 400, np.random.default_rng(2))
    fingerprint = MeanColour.fingerprint
    paths = [f"old/{number}.png" for number in range(400)]
    added_paths: list[str] = []
    added_hashes: list[str] = []
    for change in range(MAX_PARTS + 1):
        new_paths, new_hashes = photos(tmp_path, range(change, change + 1))
        added_paths += new_paths
        added_hashes += new_hashes
        records = RecordColumns(tmp_path, paths + added_paths, ["a"] * len(paths + added_paths), hashes + added_hashes)
        cache.embed(MeanColour(), records)
    parts = cache.part_paths(fingerprint)
    assert len(parts) == 1 and parts[0].name.endswith("-merged.npz")  # 17 parts: merged into one part
    with np.load(cache.path_for(fingerprint)) as archive:
        assert len(archive["sha256"]) == 400  # the main file still untouched
    merged_at = int(np.ceil(MERGE_SHARE * 400))
    for number in range(MAX_PARTS + 1, merged_at):
        new_paths, new_hashes = photos(tmp_path, range(number, number + 1))
        added_paths += new_paths
        added_hashes += new_hashes
    records = RecordColumns(tmp_path, paths + added_paths, ["a"] * len(paths + added_paths), hashes + added_hashes)
    expected = cache.embed(MeanColour(), records)
    assert not cache.part_paths(fingerprint)  # a quarter of the main file: merged into it, sorted
    with np.load(cache.path_for(fingerprint)) as archive:
        keys = archive["sha256"].tolist()
        assert keys == sorted(set(hashes + added_hashes))
    featurizer = MeanColour()
    np.testing.assert_array_equal(cache.embed(featurizer, records), expected)
    assert featurizer.calls == 0


def test_hashes_sharing_their_first_64_bits_are_told_apart(tmp_path):
    rng = np.random.default_rng(3)
    shared = "0" * 16
    hashes = [shared + f"{rng.integers(0, 2**62):048x}" for _ in range(300)] + [sha(n) for n in range(300)]
    rows = rng.standard_normal((600, DIM)).astype(np.float32)
    cache = FeatureCache(tmp_path)
    atomic_save_npz(cache.path_for("f"), sha256=np.array(hashes), embeddings=rows)
    loaded = cache.load("f")
    wanted = [hashes[i] for i in rng.permutation(600)] + [shared + "f" * 48]
    located = loaded.locate(Hashes.of(wanted))[0]
    assert (located[:-1] == 0).all() and located[-1] == -1
    np.testing.assert_array_equal(loaded.gather(Hashes.of(wanted[:-1])), reference(cache, "f", wanted[:-1]))


def test_the_mapped_member_equals_numpy_reading_and_compressed_files_are_read_whole(tmp_path):
    array = np.arange(60, dtype=np.float32).reshape(12, 5)
    plain, packed = tmp_path / "plain.npz", tmp_path / "packed.npz"
    np.savez(plain, sha256=np.array([sha(n) for n in range(12)]), embeddings=array)
    np.savez_compressed(packed, sha256=np.array([sha(n) for n in range(12)]), embeddings=array)
    mapped = mapped_npz_member(plain, "embeddings")
    assert isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(mapped, array)
    assert mapped_npz_member(packed, "embeddings") is None
    with pytest.raises(KeyError):
        mapped_npz_member(plain, "missing")
    assert zipfile.is_zipfile(plain)
    cache = FeatureCache(tmp_path)  # both read back alike, looked up by hash
    for name in ("plain", "packed"):
        np.testing.assert_array_equal(cache.load(name)[sha(4)], array[4])
