"""The REST service (workbench.api) through its own test client, on the tiny real set with the real featurizer.

Skipped when the serve requirements (requirements-serve.txt) are not installed.
"""

import io

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient
from PIL import Image

from workbench.api import ServeSettings, create_app
from workbench.workspace import WorkspaceSpec, configure

MAX_UPLOAD = 2 * 1024 * 1024
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def settings(tmp_path_factory, tiny_dataset) -> ServeSettings:
    return ServeSettings(
        WorkspaceSpec(
            configure(
                data={"root": tiny_dataset},
                uploads={"max_file_bytes": MAX_UPLOAD, "max_pixels": MAX_PIXELS, "max_pixels_full": MAX_PIXELS},
            ),
            tmp_path_factory.mktemp("api-work"),
        ),
        refusal_burst=100_000,  # this module sends many refused requests on purpose, all from one test client
    )


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(data: bytes, name: str = "query.jpg", content_type: str = "image/jpeg") -> dict:
    return {"file": (name, data, content_type)}


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert "Traceback" not in body["error"]["message"] and "/work" not in body["error"]["message"]
    return body["error"]


def test_create_app_does_no_work_before_start_up(tmp_path, tiny_dataset):
    create_app(ServeSettings(WorkspaceSpec(configure(data={"root": tiny_dataset}), tmp_path)))
    assert not any(tmp_path.iterdir())  # nothing prepared or featurized until the lifespan runs


def test_health_reports_model_and_gallery(client, lite0_featurizer):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["fingerprint"] == lite0_featurizer.fingerprint
    assert body["backend"] == "onnx"  # the default back end: exported once, validated against PyTorch
    assert body["gallery_size"] == 18 and body["embedding_dim"] == 1280
    assert body["rankers"] == ["cosine", "l2", "l1", "random"]  # the registry's plain rankers; learned once fitted


def test_embed_equals_library_featurizer(client, tiny_images, lite0_featurizer):
    paths, images = tiny_images
    response = client.post("/embed", files=upload(paths[0].read_bytes()))
    assert response.status_code == 200, response.text
    body = response.json()
    expected = lite0_featurizer.embed([images[0]])[0]
    served = np.asarray(body["embedding"], np.float32)
    assert body["dim"] == len(served) == 1280 and body["fingerprint"] == lite0_featurizer.fingerprint
    assert np.abs(served - expected).max() <= 1e-5  # onnxruntime vs PyTorch: validated at export


def test_search_finds_gallery_image_itself_first(client, tiny_dataset):
    for relative in ("fish/gc_fish1.jpg", "tools/gc_hammer1.jpg", "landmarks/gc_burj.jpg"):
        response = client.post(
            "/search", files=upload((tiny_dataset / relative).read_bytes(), "photo.png"), data={"k": "5"}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert [hit["rank"] for hit in body["hits"]] == [1, 2, 3, 4, 5]
        assert body["hits"][0]["path"] == relative and body["hits"][0]["label"] == relative.split("/")[0]
        assert body["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
        scores = [hit["score"] for hit in body["hits"]]
        assert scores == sorted(scores, reverse=True)
        assert body["ranker"] == "cosine" and body["k"] == 5 and body["timing"]["total_ms"] > 0


def test_search_rankers_and_k_bounds(client, tiny_dataset):
    data = (tiny_dataset / "fish/gc_fish2.jpg").read_bytes()
    l2 = client.post("/search", files=upload(data), data={"k": "100", "ranker": "l2"}).json()
    assert len(l2["hits"]) == 18 and l2["hits"][0]["path"] == "fish/gc_fish2.jpg"  # k is capped by the gallery size
    assert l2["hits"][0]["score"] == pytest.approx(0.0, abs=1e-3)  # negated distance; sqrt of float32 rounding
    l1 = client.post("/search", files=upload(data), data={"k": "1", "ranker": "l1"}).json()
    assert [hit["path"] for hit in l1["hits"]] == ["fish/gc_fish2.jpg"]


@pytest.mark.parametrize(
    ("make_body", "status", "code"),
    [
        (lambda photo: b"", 400, "empty_upload"),
        (lambda photo: b"just some text, not a picture\n" * 20, 415, "unsupported_media_type"),
        (lambda photo: b"%PDF-1.7\n" + bytes(range(256)) * 8, 415, "unsupported_media_type"),
        (lambda photo: photo[: len(photo) // 3], 422, "invalid_image"),  # truncated JPEG
        (lambda photo: png_bytes(4, 4), 422, "invalid_image"),  # too small to rank
        (lambda photo: png_bytes(1100, 1000), 413, "image_too_large"),  # 1.1 MP over the 1 MP limit
        (lambda photo: photo + b"\0" * MAX_UPLOAD, 413, "upload_too_large"),
    ],
    ids=["empty", "text", "pdf", "truncated", "tiny", "too-many-pixels", "oversize"],
)
@pytest.mark.parametrize("endpoint", ["/search", "/embed"])
def test_bad_uploads_get_structured_errors(client, tiny_dataset, endpoint, make_body, status, code):
    photo = (tiny_dataset / "fish/gc_fish1.jpg").read_bytes()
    error = assert_error(client.post(endpoint, files=upload(make_body(photo), "holiday.jpg")), status, code)
    if code != "upload_too_large":
        assert error["message"].startswith("holiday.jpg: ")


def test_type_is_decided_by_content_not_name(client, tiny_dataset):
    photo = (tiny_dataset / "fish/gc_fish1.jpg").read_bytes()
    response = client.post("/embed", files=upload(photo, "notes.txt", "text/plain"))
    assert response.status_code == 200  # a JPEG is a JPEG, whatever it is called
    assert_error(
        client.post("/embed", files=upload(b"hello", "photo.jpg", "image/jpeg")), 415, "unsupported_media_type"
    )


def test_oversize_body_is_cut_off_while_streaming(client):
    boundary = "workbench-test"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    body = head.encode() + b"\xff" * (3 * MAX_UPLOAD) + f"\r\n--{boundary}--\r\n".encode()
    sent = []

    def chunks():  # no Content-Length: the limit must be enforced as the bytes arrive
        for start in range(0, len(body), 64 * 1024):
            sent.append(start)
            yield body[start : start + 64 * 1024]

    response = client.post(
        "/embed", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert_error(response, 413, "upload_too_large")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"k": "0"}, "invalid_request"),
        ({"k": "101"}, "invalid_request"),
        ({"k": "three"}, "invalid_request"),
        ({"ranker": "euclid"}, "invalid_request"),
        ({"ranker": "svm"}, "ranker_unavailable"),
    ],
)
def test_bad_fields_get_422(client, tiny_dataset, data, code):
    photo = (tiny_dataset / "fish/gc_fish1.jpg").read_bytes()
    error = assert_error(client.post("/search", files=upload(photo), data=data), 422, code)
    assert error["message"]


def test_fuse_on_a_dataset_without_attributes_is_refused(client, tiny_dataset):
    photo = (tiny_dataset / "fish/gc_fish1.jpg").read_bytes()
    refused = client.post("/search", files=upload(photo), data={"fuse": ["label=1"]})
    error = assert_error(refused, 422, "fusion_unavailable")
    assert error["message"] == "fuse: this dataset has no attributes.csv with attributes to fuse"


def test_missing_file_and_unknown_routes_are_structured(client):
    assert_error(client.post("/search", data={"k": "3"}), 422, "invalid_request")
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.get("/search"), 405, "method_not_allowed")


def test_openapi_describes_endpoints_and_errors(client):
    spec = client.get("/openapi.json").json()
    assert {"/health", "/embed", "/search"} <= set(spec["paths"])
    search = spec["paths"]["/search"]["post"]
    assert {"200", "400", "413", "415", "422"} <= set(search["responses"])
    assert "ErrorResponse" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_torch_back_end_serves_the_same_embeddings_as_the_default_onnx_one(
    tmp_path, tiny_dataset, tiny_images, lite0_featurizer
):
    paths, images = tiny_images
    spec = WorkspaceSpec(configure(data={"root": tiny_dataset}), tmp_path, backend="torch")
    with TestClient(create_app(ServeSettings(spec))) as onnx_client:
        health = onnx_client.get("/health").json()
        assert health["backend"] == "torch" and health["fingerprint"] == lite0_featurizer.fingerprint
        served = np.asarray(
            onnx_client.post("/embed", files=upload(paths[3].read_bytes())).json()["embedding"], np.float32
        )
        assert np.abs(served - lite0_featurizer.embed([images[3]])[0]).max() < 1e-5
        relative = str(paths[3].relative_to(tiny_dataset))
        hits = onnx_client.post("/search", files=upload(paths[3].read_bytes())).json()["hits"]
        assert hits[0]["path"] == relative


# --- schema-driven fuzzing: schemathesis generates requests from the app's own OpenAPI document -----------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzz_openapi_conformance(settings, tiny_dataset, mode):
    """30 generated requests per mode over every operation: no 5xx; status codes, content types and bodies
    as the OpenAPI document declares them (schemathesis' default checks).

    The schema cannot say "bytes that decode as an image", so schemathesis' "schema-valid request rejected"
    check is excluded: random bytes are schema-valid but rightly get 415. Half the positive cases carry a
    real photo instead, so generated ``k`` and ``ranker`` values also reach the success path.
    """
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings
    from hypothesis import strategies as st
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    photo = (tiny_dataset / "tools/gc_hammer1.jpg").read_bytes()
    # In-process ASGI; schemathesis runs the app's lifespan itself. (Its pytest fixture loader fails on pytest 9.)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))
    strategy = schema.as_strategy(generation_mode=schemathesis.GenerationMode(mode))
    seen = []

    @given(case=strategy, real_photo=st.booleans())
    @hypothesis_settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case, real_photo):
        if mode == "positive" and real_photo and isinstance(case.body, dict) and "file" in case.body:
            case.body["file"] = photo
        response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
        seen.append((case.operation.label, response.status_code))

    run()
    assert {label for label, _ in seen} >= {"POST /embed", "POST /search"}
    assert all(status < 500 for _, status in seen)
    if mode == "positive":
        assert any(status == 200 for label, status in seen if label == "POST /search")


def test_decoded_pixels_follow_jpeg_reduction():
    from core.images import ImageHeader
    from workbench.api import decoded_pixels

    assert decoded_pixels(ImageHeader("PNG", 4000, 3000), 256) == 12_000_000
    assert decoded_pixels(ImageHeader("JPEG", 4000, 3000), 256) == 500 * 375  # 1/8: short side 375 >= 256
    assert decoded_pixels(ImageHeader("JPEG", 800, 600), 256) == 400 * 300  # 1/2 only: 1/4 would be 150 < 256
    assert decoded_pixels(ImageHeader("JPEG", 800, 600), None) == 480_000


def test_the_look_weight_moves_projection_results_and_each_hit_shows_both_parts(client, settings, tiny_dataset):
    from core.metric_learning import ProjectionRanker
    from workbench.workflows import fit_ranker
    from workbench.workspace import open_workspace

    ws = open_workspace(settings.workspace)  # a saved projection (random matrix: no fit needed) the server then sees
    matrix = np.random.default_rng(0).normal(size=(ws.embeddings.shape[1], 8)).astype(np.float32)
    saved = fit_ranker(ws, "projection", ProjectionRanker(matrix=matrix)).path
    try:
        check_look_weight(client, (tiny_dataset / "fish/gc_fish2.jpg").read_bytes())
    finally:
        saved.unlink()  # the module's other tests expect no learned ranker


def check_look_weight(client: TestClient, data: bytes) -> None:
    ready = client.post("/search", files=upload(data), data={"k": "5", "ranker": "projection"})
    assert ready.status_code == 200, ready.text
    for hit in ready.json()["hits"]:
        assert hit["score"] == pytest.approx(0.4 * hit["agreement"] + 0.6 * hit["look"], abs=1e-4)  # default 0.6
    looks = client.post("/search", files=upload(data), data={"k": "5", "ranker": "projection", "look_weight": "1"})
    cosine = client.post("/search", files=upload(data), data={"k": "5", "ranker": "cosine"}).json()
    assert [hit["path"] for hit in looks.json()["hits"]] == [hit["path"] for hit in cosine["hits"]]
    assert all(hit["agreement"] is None and hit["look"] is None for hit in cosine["hits"])
    refused = client.post("/search", files=upload(data), data={"ranker": "cosine", "look_weight": "0.5"})
    assert "the cosine ranker has no look weight" in assert_error(refused, 422, "invalid_request")["message"]
    out_of_range = client.post("/search", files=upload(data), data={"ranker": "projection", "look_weight": "1.5"})
    assert out_of_range.status_code == 422
