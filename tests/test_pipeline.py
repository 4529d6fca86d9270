"""prepared.json round trip, including near-duplicate leaks found by prepare."""

import numpy as np
from PIL import Image

from core.config import DataConfig
from core.pipeline import load_prepared, prepare, save_prepared


def test_prepare_records_leaks_and_round_trips(tmp_path, tiny_dataset):
    data = tmp_path / "data"
    for source in sorted(tiny_dataset.glob("*/*.jpg")):
        (data / source.parent.name).mkdir(parents=True, exist_ok=True)
        (data / source.parent.name / source.name).write_bytes(source.read_bytes())
    # a resized, re-encoded copy of every fish: some copies must land on the other side of the split
    for source in sorted((tiny_dataset / "fish").glob("*.jpg")):
        image = Image.open(source)
        image.resize((image.width * 3 // 4, image.height * 3 // 4)).save(
            data / "fish" / f"copy_{source.name}", quality=80
        )
    prepared = prepare(DataConfig(root=data, n_negatives=5))
    assert prepared.leaks, "no near-duplicate straddles the split"
    assert prepared.leaks.count == len(prepared.leaks.sample)  # fewer than LEAK_SAMPLE pairs: all listed
    for leak in prepared.leaks.sample:
        assert {leak.train_path.name.removeprefix("copy_"), leak.test_path.name.removeprefix("copy_")} == {
            leak.train_path.name.removeprefix("copy_")
        }
        assert leak.distance <= 32
    save_prepared(prepared, tmp_path / "work")
    loaded = load_prepared(tmp_path / "work")
    assert loaded.leaks == prepared.leaks
    assert [r.sha256 for r in loaded.dataset.records] == [r.sha256 for r in prepared.dataset.records]
    np.testing.assert_array_equal(loaded.test_sets.references, prepared.test_sets.references)
    assert loaded.config == prepared.config


def test_prepared_arrays_are_checked_against_their_json(tmp_path, tiny_dataset):
    import json

    import pytest

    from core.errors import ArtifactError

    prepared = prepare(DataConfig(root=tiny_dataset, n_negatives=5))
    save_prepared(prepared, tmp_path / "a")
    save_prepared(prepared, tmp_path / "b")
    loaded = load_prepared(tmp_path / "a")
    assert loaded.dataset == prepared.dataset and loaded.source == prepared.source
    np.testing.assert_array_equal(loaded.split.train, prepared.split.train)
    np.testing.assert_array_equal(loaded.train_sets.queries, prepared.train_sets.queries)

    # arrays of another prepare beside this json: refused, naming the file and the fix
    (tmp_path / "a" / "prepared.npz").write_bytes((tmp_path / "b" / "prepared.npz").read_bytes())
    with pytest.raises(ArtifactError, match=r"prepared.json: malformed .*another prepare.*workbench prepare"):
        load_prepared(tmp_path / "a")
    save_prepared(prepared, tmp_path / "a")
    (tmp_path / "a" / "prepared.npz").write_bytes((tmp_path / "a" / "prepared.npz").read_bytes()[:500])
    with pytest.raises(ArtifactError, match="prepared.json: malformed"):
        load_prepared(tmp_path / "a")
    (tmp_path / "a" / "prepared.npz").unlink()
    with pytest.raises(ArtifactError, match="prepared.npz: not found"):
        load_prepared(tmp_path / "a")
    # an index past the records (a hand-edited count or a foreign file) is refused too
    save_prepared(prepared, tmp_path / "a")
    payload = json.loads((tmp_path / "a" / "prepared.json").read_text())
    payload["counts"]["images"] += 1
    (tmp_path / "a" / "prepared.json").write_text(json.dumps(payload))
    with pytest.raises(ArtifactError, match="malformed"):
        load_prepared(tmp_path / "a")
