"""The one "no close match" signal (core.out_of_gallery): by hand, against a loop, on a sample, and through the
CLI's line and the REST API's field (the app's banner: tests/test_app.py and the browser tests)."""

import io

import numpy as np
import pytest
from PIL import Image

from core.out_of_gallery import MatchStrength, same_label_floor
from workbench.cli import main


def test_same_label_floor_by_hand_and_against_a_loop():
    import numpy as np

    def unit(degrees):
        return [np.cos(np.radians(degrees)), np.sin(np.radians(degrees))]

    # a, a' 10 degrees apart (cos 0.985); b, b' 60 degrees apart (cos 0.5); c alone (ignored); a' is also near b
    embeddings = np.array([unit(0), unit(10), unit(40), unit(100), unit(200)], np.float32)
    labels = np.array(["a", "a", "b", "b", "c"])
    assert same_label_floor(embeddings, labels, quantile=0.0) == pytest.approx(0.5, abs=1e-6)
    assert same_label_floor(embeddings, labels, quantile=1.0) == pytest.approx(np.cos(np.radians(10)), abs=1e-6)
    assert same_label_floor(embeddings, labels, 0.5) == pytest.approx((0.5 + np.cos(np.radians(10))) / 2, abs=1e-6)

    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(50, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    labels = rng.integers(0, 6, 50)
    nearest = []
    for i in range(50):  # the reference: a plain loop
        same = [float(embeddings[i] @ embeddings[j]) for j in range(50) if j != i and labels[j] == labels[i]]
        if same:
            nearest.append(max(same))
    expected = float(np.quantile(nearest, 0.1))
    assert same_label_floor(embeddings, labels, 0.1, block=7) == pytest.approx(expected, abs=1e-6)
    assert MatchStrength(0.3, expected).close is (expected <= 0.3)
    with pytest.raises(ValueError, match="no label has two images"):
        same_label_floor(embeddings[:3], np.array(["x", "y", "z"]))


def test_a_sampled_floor_is_the_loop_over_that_sample():
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(300, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    labels = rng.integers(0, 5, 300)
    rows = np.sort(np.random.default_rng(7).choice(300, size=40, replace=False))
    nearest = [
        max(float(embeddings[i] @ embeddings[j]) for j in range(300) if j != i and labels[j] == labels[i]) for i in rows
    ]
    sampled = same_label_floor(embeddings, labels, 0.1, max_rows=40, rng=np.random.default_rng(7))
    assert sampled == pytest.approx(float(np.quantile(nearest, 0.1)), abs=1e-6)
    assert same_label_floor(embeddings, labels, 0.1, max_rows=None) != sampled  # the whole gallery differs


def noise_png(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_cli_and_rest_say_no_close_match_for_noise_and_not_for_a_gallery_photo(tmp_path, tiny_dataset, capsys):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from workbench.api import ServeSettings, create_app
    from workbench.workspace import WorkspaceSpec, configure

    common = ["--data", str(tiny_dataset), "--workdir", str(tmp_path / "work"), "--quiet", "--ranker", "cosine"]
    noise = tmp_path / "noise.png"
    noise.write_bytes(noise_png())
    photo = tiny_dataset / "fish" / "gc_fish1.jpg"
    assert main(["search", str(photo), "-k", "3", *common]) == 0
    assert "no close match" not in capsys.readouterr().out
    assert main(["search", str(noise), "-k", "3", *common]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("no close match: the query's best cosine similarity to any gallery image is ")

    settings = ServeSettings(WorkspaceSpec(configure(data={"root": tiny_dataset}), tmp_path / "work"))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        answers = {
            name: client.post("/search", files={"file": (name, data, "image/png")}, data={"k": 3}).json()["match"]
            for name, data in (("noise.png", noise.read_bytes()), ("fish.jpg", photo.read_bytes()))
        }
    assert (
        answers["noise.png"]["close"] is False and answers["noise.png"]["best_cosine"] < answers["noise.png"]["floor"]
    )
    assert answers["fish.jpg"]["close"] is True and answers["fish.jpg"]["best_cosine"] == pytest.approx(1.0, abs=1e-3)
    assert answers["fish.jpg"]["floor"] == pytest.approx(answers["noise.png"]["floor"])  # one floor per gallery
