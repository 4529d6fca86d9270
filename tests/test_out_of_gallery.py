"""The one "no close match" signal (core.out_of_gallery): by hand, against a loop, on a sample, through the real
featurizer (Workspace.match), and through the CLI's line and the REST API's field (the app's banner:
tests/test_app.py and the browser tests). Measured on larger sets in docs/out_of_gallery.md."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.out_of_gallery import (
    MatchReference,
    MatchStrength,
    calibrate,
    nearest_neighbour_floor,
    non_photos,
)
from workbench.cli import main

#: A real full-frame photo of a landmark (Debian ``scratch``'s mansion background, CC-BY-SA-3.0, (c) 2011 MIT), in
#: another style than the tiny gallery's landmarks: its best cosine similarity to them lies below the gallery's floor,
#: yet it is a photo of a gallery label, and the old rule (same-label 10 % floor) flagged it.
OUTSIDE_PHOTO = Path(__file__).parent / "fixtures" / "outside" / "scratch_mansion.jpg"


def unit(degrees: float) -> list[float]:
    return [float(np.cos(np.radians(degrees))), float(np.sin(np.radians(degrees)))]


def test_nearest_neighbour_floor_by_hand_and_against_a_loop():
    # nearest other image, any label: 0 -> 10 (cos 10), 10 -> 0, 40 -> 10 (cos 30), 100 -> 40 (cos 60), 200 -> 100
    embeddings = np.array([unit(0), unit(10), unit(40), unit(100), unit(200)], np.float32)
    nearest = np.cos(np.radians([10, 10, 30, 60, 100]))
    assert nearest_neighbour_floor(embeddings, quantile=0.0) == pytest.approx(nearest.min(), abs=1e-6)
    assert nearest_neighbour_floor(embeddings, quantile=1.0) == pytest.approx(nearest.max(), abs=1e-6)
    assert nearest_neighbour_floor(embeddings, 0.5) == pytest.approx(np.cos(np.radians(30)), abs=1e-6)

    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(50, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    loop = [max(float(embeddings[i] @ embeddings[j]) for j in range(50) if j != i) for i in range(50)]
    assert nearest_neighbour_floor(embeddings, 0.05, block=7) == pytest.approx(np.quantile(loop, 0.05), abs=1e-6)
    with pytest.raises(ValueError, match="fewer than two images"):
        nearest_neighbour_floor(embeddings[:1])


def test_a_sampled_floor_is_the_loop_over_that_sample():
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(300, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    rows = np.sort(np.random.default_rng(7).choice(300, size=40, replace=False))
    nearest = [max(float(embeddings[i] @ embeddings[j]) for j in range(300) if j != i) for i in rows]
    sampled = nearest_neighbour_floor(embeddings, 0.05, max_rows=40, rng=np.random.default_rng(7))
    assert sampled == pytest.approx(float(np.quantile(nearest, 0.05)), abs=1e-6)
    assert nearest_neighbour_floor(embeddings, 0.05, max_rows=None) != sampled  # the whole gallery differs


def test_the_verdict_and_its_sentence_by_hand():
    at_floor = MatchStrength(best=0.41, floor=0.41, non_photo=0.9, non_photo_kind="noise")
    assert at_floor.close  # as close as gallery images are to each other, whatever the non-photos say
    assert "is 0.410, at least 0.410, which 95 % of gallery images reach" in at_floor.explain()

    photo = MatchStrength(best=0.29, floor=0.41, non_photo=0.15, non_photo_kind="pattern")
    assert photo.close  # below the floor, but nearer the gallery than any non-photo
    assert "below 0.410" in photo.explain() and "higher than to any generated non-photo (0.150)" in photo.explain()

    noise = MatchStrength(best=0.25, floor=0.41, non_photo=0.83, non_photo_kind="noise")
    tie = MatchStrength(best=0.3, floor=0.41, non_photo=0.3, non_photo_kind="text")
    assert not noise.close and not tie.close  # a tie with a non-photo is no match
    assert noise.explain() == (
        "the query's best cosine similarity to a gallery image is 0.250, below 0.410, which 95 % of gallery images "
        "reach with their nearest other gallery image, and no higher than to a generated non-photo (noise, 0.830): "
        "the results are the least distant images, not similar ones"
    )


def test_non_photos_are_seeded_and_of_every_kind():
    first, again = non_photos(np.random.default_rng(3)), non_photos(np.random.default_rng(3))
    assert [kind for kind, _ in first] == [kind for kind, _ in again]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (_, a), (_, b) in zip(first, again, strict=True))
    other = non_photos(np.random.default_rng(4))
    assert not np.array_equal(np.asarray(first[0][1]), np.asarray(other[0][1]))  # the noise follows the generator
    assert {kind for kind, _ in first} == {"noise", "flat colour", "gradient", "pattern", "text"}
    assert all(image.mode == "RGB" for _, image in first)


def test_reference_strength_against_a_loop():
    rng = np.random.default_rng(5)
    references = rng.normal(size=(6, 4)).astype(np.float32)
    references /= np.linalg.norm(references, axis=1, keepdims=True)
    kinds = ("noise", "noise", "flat colour", "gradient", "pattern", "text")
    reference = MatchReference(0.5, references, kinds)
    query = rng.normal(size=(1, 4)).astype(np.float32) * 3.0  # not unit: strength normalises it
    direction = query[0] / np.linalg.norm(query[0])
    scores = [float(direction @ row) for row in references]
    strength = reference.strength(query, 0.2)
    assert strength.non_photo == pytest.approx(max(scores), abs=1e-6)
    assert strength.non_photo_kind == kinds[int(np.argmax(scores))]
    assert (strength.best, strength.floor) == (0.2, 0.5)


def test_calibrate_checks_the_featurizer_width():
    gallery = np.eye(3, dtype=np.float32)

    def embed(images):
        return np.ones((len(images), 2), np.float32)

    with pytest.raises(ValueError, match=r"non-photo embeddings \(\d+, 2\) do not fit gallery embeddings \(3, 3\)"):
        calibrate(gallery, embed)


def mean_colour_embed(images):
    """A stand-in featurizer: each image's mean colour, plus one, as a unit vector (no two kinds collide)."""
    rows = np.array([np.asarray(image, np.float32).reshape(-1, 3).mean(axis=0) + 1.0 for image in images])
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_calibrate_keeps_the_non_photos_in_a_cache_file(tmp_path, caplog):
    from core.out_of_gallery import non_photo_cache

    gallery = np.array([[*unit(0), 0.0], [*unit(10), 0.0], [*unit(50), 0.0]], np.float32)
    cache = non_photo_cache(tmp_path / "features", "fp1")
    first = calibrate(gallery, mean_colour_embed, cache=cache)
    assert cache.is_file() and cache.name == "fp1.non-photos-v1.npz"

    def refuse(images):
        raise AssertionError("embedded again although the cache fits")

    again = calibrate(gallery, refuse, cache=cache)
    assert np.array_equal(again.non_photo_embeddings, first.non_photo_embeddings)
    assert again.non_photo_kinds == first.non_photo_kinds and again.floor == first.floor
    uncached = calibrate(gallery, mean_colour_embed)
    assert np.allclose(uncached.non_photo_embeddings, first.non_photo_embeddings)

    cache.write_bytes(b"not a zip")  # damaged: one warning, embedded again, written again
    with caplog.at_level("WARNING", logger="core.out_of_gallery"):
        repaired = calibrate(gallery, mean_colour_embed, cache=cache)
    assert "unreadable" in caplog.text and str(cache) in caplog.text
    assert np.allclose(repaired.non_photo_embeddings, first.non_photo_embeddings)
    assert calibrate(gallery, refuse, cache=cache).non_photo_kinds == first.non_photo_kinds
    wider = np.hstack([gallery, np.zeros((3, 1), np.float32)])  # another featurizer width: not read
    with pytest.raises(ValueError, match="do not fit gallery embeddings"):
        calibrate(wider, mean_colour_embed, cache=cache)
    assert "do not fit width 4" in caplog.text


def image_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def noise_png(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    return image_bytes(Image.fromarray(pixels))


def unseen_non_photos() -> dict[str, bytes]:
    """Non-photos drawn unlike the reference set: other noise, another colour, a page of large type."""
    page = Image.new("RGB", (300, 420), (250, 250, 245))
    draw = ImageDraw.Draw(page)
    for row in range(12):
        draw.text((20, 20 + 32 * row), "The quick brown fox jumps over", fill=(20, 20, 20), font_size=22)
    return {
        "noise.png": noise_png(11),
        "orange.png": image_bytes(Image.new("RGB", (320, 240), (250, 140, 20))),
        "page.png": image_bytes(page),
    }


@pytest.fixture(scope="module")
def tiny_workspace(tmp_path_factory, tiny_dataset):
    from workbench.workspace import WorkspaceSpec, configure, open_workspace

    work = tmp_path_factory.mktemp("oog") / "work"
    return open_workspace(WorkspaceSpec(configure(data={"root": tiny_dataset}), work))


def test_workspace_match_flags_non_photos_and_not_real_photos(tiny_workspace, tiny_dataset):
    from core.images import decode_image, load_image

    ws = tiny_workspace
    for name, data in unseen_non_photos().items():
        strength = ws.match(ws.embed([decode_image(data, name=name)]))
        assert not strength.close, (name, strength)
        assert strength.non_photo >= strength.best
    gallery = ws.match(ws.embed([load_image(tiny_dataset / "fish" / "gc_fish1.jpg")]))
    assert gallery.close and gallery.best == pytest.approx(1.0, abs=1e-3)
    outside = ws.match(ws.embed([load_image(OUTSIDE_PHOTO)]))
    assert outside.close, outside
    assert outside.best < outside.floor  # the non-photo clause keeps it: the floor alone would flag it
    assert "a photo unlike the gallery's own" in outside.explain()


def test_cli_and_rest_say_no_close_match_for_noise_and_not_for_real_photos(tmp_path, tiny_dataset, capsys):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from workbench.api import ServeSettings, create_app
    from workbench.workspace import WorkspaceSpec, configure

    common = ["--data", str(tiny_dataset), "--workdir", str(tmp_path / "work"), "--quiet", "--ranker", "cosine"]
    noise = tmp_path / "noise.png"
    noise.write_bytes(noise_png())
    photo = tiny_dataset / "fish" / "gc_fish1.jpg"
    for real in (photo, OUTSIDE_PHOTO):
        assert main(["search", str(real), "-k", "3", *common]) == 0
        assert "no close match" not in capsys.readouterr().out
    assert main(["search", str(noise), "-k", "3", *common]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("no close match: the query's best cosine similarity to a gallery image is ")
    assert "no higher than to a generated non-photo (noise, " in lines[-1]

    settings = ServeSettings(WorkspaceSpec(configure(data={"root": tiny_dataset}), tmp_path / "work"))
    uploads = {"fish.jpg": photo.read_bytes(), "mansion.jpg": OUTSIDE_PHOTO.read_bytes(), **unseen_non_photos()}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        answers = {
            name: client.post("/search", files={"file": (name, data, "image/png")}, data={"k": 3}).json()["match"]
            for name, data in uploads.items()
        }
    for name in unseen_non_photos():
        answer = answers[name]
        assert answer["close"] is False, answer
        assert answer["best_cosine"] < answer["floor"] and answer["best_cosine"] <= answer["non_photo_cosine"]
        assert answer["explanation"].startswith("the query's best cosine similarity to a gallery image is ")
    assert (
        answers["noise.png"]["non_photo_kind"] == "noise" and answers["orange.png"]["non_photo_kind"] == "flat colour"
    )
    assert answers["fish.jpg"]["close"] is True and answers["fish.jpg"]["best_cosine"] == pytest.approx(1.0, abs=1e-3)
    mansion = answers["mansion.jpg"]
    assert mansion["close"] is True and mansion["non_photo_cosine"] < mansion["best_cosine"] < mansion["floor"]
    assert len({answer["floor"] for answer in answers.values()}) == 1  # one floor per gallery
