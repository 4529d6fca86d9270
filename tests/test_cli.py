"""End to end through the CLI on tiny real photos with the real pretrained weights."""

import json
from pathlib import Path

import pytest

from core.workdir import WorkDir
from workbench.cli import main


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_dataset):
    workdir = tmp_path_factory.mktemp("work")
    assert main(["prepare", "--data", str(tiny_dataset), "--workdir", str(workdir), "--quiet"]) == 0
    return workdir


def layout(workdir, data, condition=""):
    return WorkDir(workdir, data, condition)


def test_prepare_writes_split_and_sets(workdir, tiny_dataset, capsys):
    from core.pipeline import load_prepared

    written = json.loads(layout(workdir, tiny_dataset).prepared.read_text())
    assert written["counts"]["images"] == len(list(tiny_dataset.glob("*/*.jpg")))
    assert written["versions"]["torch"]
    prepared = load_prepared(layout(workdir, tiny_dataset).root)  # records, split and sets in prepared.npz
    assert len(prepared.dataset) == written["counts"]["images"]
    train, test = set(prepared.split.train.tolist()), set(prepared.split.test.tolist())
    assert train and test and not train & test and len(train) == written["counts"]["train"]


def test_featurize_evaluate_search(workdir, tiny_dataset, capsys):
    common = ["--data", str(tiny_dataset), "--workdir", str(workdir), "--quiet"]
    assert main(["featurize", *common]) == 0
    assert "embeddings of dimension 1280" in capsys.readouterr().out
    assert len(list(layout(workdir, tiny_dataset).features.glob("*.npz"))) == 1

    assert main(["evaluate", *common]) == 0
    table = capsys.readouterr().out
    for name in ("random", "l1", "l2", "cosine"):
        assert f"\n{name} " in table
    report = json.loads(next((layout(workdir, tiny_dataset).root / "reports").glob("*.json")).read_text())
    assert set(report["results"]) == {"random", "l1", "l2", "cosine"}
    cosine = report["results"]["cosine"]
    assert cosine["mean_rank"]["value"] <= report["results"]["random"]["mean_rank"]["value"]
    assert "copy recall@1" in table and set(report["looks"]) == set(report["results"])
    assert report["looks"]["cosine"]["recall@1"]["value"] > report["looks"]["random"]["recall@1"]["value"]
    # every interval names its method: proportions Wilson score, means bootstrap (report schema 2)
    assert report["schema_version"] == 2
    assert cosine["top1"]["method"] == cosine["top5"]["method"] == report["looks"]["cosine"]["recall@1"]["method"]
    assert cosine["top1"]["method"] == "wilson" and cosine["mean_rank"]["method"] == "bootstrap"
    intervals = report["retrieval"]["cosine"]["intervals"]
    assert intervals["recall@1"]["method"] == "wilson" and intervals["map@r"]["method"] == "bootstrap"
    assert "Wilson score for top-1 and top-5" in table

    query = sorted(tiny_dataset.glob("*/*.jpg"))[0]
    assert main(["search", str(query), "-k", "3", *common, "--ranker", "l2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4  # header + 3 hits
    top = lines[1].split()
    assert top[0] == "1" and float(top[1]) == pytest.approx(0.0, abs=1e-3)  # the query itself, distance 0
    assert top[2] == query.parent.name and top[3].endswith(query.name)

    def search(*extra):
        assert main(["search", str(query), "-k", "8", *common, *extra]) == 0
        return capsys.readouterr().out

    cosine, random = search(), search("--ranker", "random")
    assert cosine == search("--ranker", "cosine") and random != cosine
    # after tune, search opens with tune's choice as the app does; --ranker and --run still override it
    choice = layout(workdir, tiny_dataset).default_choice
    choice.write_text('{"featurizer": "pretrained", "ranker": "random"}')
    assert search() == random
    assert search("--ranker", "cosine") == cosine and search("--run", "pretrained") == cosine
    choice.write_text('{"featurizer": "deleted-run", "ranker": "random"}')  # a run removed since tune chose it
    assert search() == cosine
    choice.unlink()  # the module's workdir is shared


def test_user_errors_exit_2_with_a_clear_message(tmp_path, caplog):
    assert main(["prepare", "--data", str(tmp_path / "missing"), "--workdir", str(tmp_path / "w"), "--quiet"]) == 2
    assert "missing: dataset folder not found" in caplog.text
    bad = tmp_path / "bad.jpg"
    bad.write_text("text")
    caplog.clear()
    assert main(["search", str(bad), "--workdir", str(tmp_path / "w"), "--quiet"]) == 2
    assert "bad.jpg: not a recognised image format" in caplog.text
    config = tmp_path / "c.toml"
    config.write_text("[data]\nsed = 1\n")
    assert main(["prepare", "--config", str(config), "--workdir", str(tmp_path / "w"), "--quiet"]) == 2
    assert "unknown setting(s) sed" in caplog.text


@pytest.mark.slow  # long (real training, export or server): `make test-slow` runs it in CI
def test_train_fits_the_svm_and_evaluate_includes_it(tmp_path, tiny_dataset, capsys):
    common = ["--data", str(tiny_dataset), "--workdir", str(tmp_path), "--quiet"]
    assert main(["train", *common, "--run", "tiny", "--epochs", "1", "--input-size", "128", "--batch-size", "6"]) == 0
    out = capsys.readouterr().out
    assert "run tiny" in out and "\n    1 " in out and "svm ranker fitted" in out
    assert main(["fit", *common, "--run", "tiny", "--ranker", "svm", "--C", "1.0", "--rounds", "0"]) == 0
    out = capsys.readouterr().out
    assert "train pairs: accuracy" in out and "test pairs" in out
    assert main(["evaluate", *common, "--run", "tiny"]) == 0
    table = capsys.readouterr().out
    assert "\nsvm " in table  # a saved SVM joins "all"
    assert main(["evaluate", *common, "--ranker", "svm"]) == 2  # no SVM was fitted for the pretrained featurizer


def test_a_zero_epoch_run_is_refused_in_one_line(tmp_path, tiny_dataset, caplog):
    common = ["--data", str(tiny_dataset), "--workdir", str(tmp_path), "--quiet"]
    assert main(["train", *common, "--run", "nothing", "--epochs", "0"]) == 2
    assert "0 epochs would keep the pretrained weights" in caplog.text
    assert not any(tmp_path.rglob("checkpoint.pt"))  # no two-minute run that changes nothing


def test_bad_run_names_are_refused(tmp_path, tiny_dataset, caplog):
    assert main(["featurize", "--data", str(tiny_dataset), "--workdir", str(tmp_path), "--quiet", "--run", "../x"]) == 2
    assert "plain folder name" in caplog.text


@pytest.mark.slow  # long (real training, export or server): `make test-slow` runs it in CI
def test_export_then_onnx_backend_gives_the_same_features_and_search(tmp_path, tiny_dataset, capsys):
    import numpy as np

    torch_work, onnx_work = tmp_path / "torch", tmp_path / "onnx"
    common = ["--data", str(tiny_dataset), "--quiet"]
    assert main(["featurize", *common, "--workdir", str(torch_work), "--backend", "torch"]) == 0
    assert main(["export", *common, "--workdir", str(onnx_work)]) == 0
    assert "min cosine 1.000000" in capsys.readouterr().out
    [torch_file] = layout(torch_work, tiny_dataset).features.glob("*.npz")
    assert (layout(onnx_work, tiny_dataset).onnx_cache / f"{torch_file.stem}.onnx").is_file()  # keyed by fingerprint
    assert main(["featurize", *common, "--workdir", str(onnx_work), "--backend", "onnx"]) == 0
    onnx_file = layout(onnx_work, tiny_dataset).features / torch_file.name  # same fingerprint, same cache file
    with np.load(torch_file) as a, np.load(onnx_file) as b:
        order = np.argsort(b["sha256"])
        np.testing.assert_array_equal(np.sort(a["sha256"]), b["sha256"][order])
        torch_rows = a["embeddings"][np.argsort(a["sha256"])]
        assert np.min(np.sum(torch_rows * b["embeddings"][order], axis=1)) > 0.9999
    query = str(sorted(tiny_dataset.glob("*/*.jpg"))[3])
    capsys.readouterr()
    assert main(["search", query, "-k", "10", *common, "--workdir", str(torch_work), "--backend", "torch"]) == 0
    torch_hits = [line.split()[3] for line in capsys.readouterr().out.splitlines()[1:]]
    assert main(["search", query, "-k", "10", *common, "--workdir", str(onnx_work), "--backend", "onnx"]) == 0
    onnx_hits = [line.split()[3] for line in capsys.readouterr().out.splitlines()[1:]]
    assert onnx_hits == torch_hits and len(torch_hits) == 10

    # the projection ranker baked in: refused in one line before it is fitted, then the graph's output is its vector
    baked = tmp_path / "baked.onnx"
    capsys.readouterr()
    assert main(["export", *common, "--workdir", str(onnx_work), "--with-projection", str(baked)]) == 2
    assert not baked.exists()
    assert main(["fit", *common, "--workdir", str(onnx_work), "--ranker", "projection"]) == 0
    assert main(["export", *common, "--workdir", str(onnx_work), "--with-projection", str(baked)]) == 0
    assert f"wrote {baked}: the projection ranker baked in" in capsys.readouterr().out
    plain_file = layout(onnx_work, tiny_dataset).onnx_cache / f"{torch_file.stem}.onnx"
    before = plain_file.read_bytes()
    assert main(["export", *common, "--workdir", str(onnx_work), "--with-projection", str(plain_file)]) == 2
    assert plain_file.read_bytes() == before  # the featurizer itself is never overwritten by its baked copy
    import onnxruntime as ort
    from PIL import Image

    from core.metric_learning import ProjectionRanker
    from core.preprocessing import resize_crop
    from export.onnx_featurizer import OnnxFeaturizer

    plain = OnnxFeaturizer(layout(onnx_work, tiny_dataset).onnx_cache / f"{torch_file.stem}.onnx")
    ranker = ProjectionRanker.load(layout(onnx_work, tiny_dataset).ranker("projection", torch_file.stem))
    photos = [Image.open(path).convert("RGB") for path in sorted(tiny_dataset.glob("*/*.jpg"))[:5]]
    pixels = np.stack([resize_crop(photo, plain.preprocessing) for photo in photos])
    session = ort.InferenceSession(str(baked), providers=["CPUExecutionProvider"])
    got = session.run(["embedding"], {"pixels": pixels})[0]
    assert got.shape == (5, ranker.output_dim)
    np.testing.assert_allclose(got, ranker.transform(plain.embed(photos)), atol=1e-5)


@pytest.mark.slow  # long (real training, export or server): `make test-slow` runs it in CI
def test_export_of_a_fine_tuned_run_is_keyed_by_its_weights(tmp_path, tiny_dataset, capsys):
    common = ["--data", str(tiny_dataset), "--workdir", str(tmp_path), "--quiet", "--run", "ft"]
    train = ["train", *common, "--epochs", "1", "--input-size", "128", "--batch-size", "6"]
    assert main(train) == 0
    capsys.readouterr()
    assert main(["export", *common]) == 0
    out = capsys.readouterr().out
    exported = Path(out.split()[1])
    assert "min cosine 1.000000" in out and exported.parent == layout(tmp_path, tiny_dataset).onnx_cache
    from export.onnx_featurizer import OnnxFeaturizer

    assert OnnxFeaturizer(exported).metadata.training_run == "ft"
    assert OnnxFeaturizer(exported).preprocessing.input_size == 128
    assert main([*train, "--restart", "--lr", "0.01"]) == 0
    assert main(["featurize", *common]) == 0  # the retrained run has other weights: the old export is not used
    assert f"({exported.stem}" not in capsys.readouterr().out


def test_index_build_search_remove_add(tmp_path, tiny_dataset, capsys):
    common = ["--data", str(tiny_dataset), "--workdir", str(tmp_path), "--quiet"]
    query = tiny_dataset / "tools" / "gc_wrench.jpg"
    assert main(["index", "build", *common]) == 0
    assert "indexed 18 images (exact)" in capsys.readouterr().out
    assert main(["index", "search", str(query), "-k", "3", *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[3].endswith("gc_wrench.jpg") and len(lines) == 4
    assert main(["index", "remove", str(query), *common]) == 0
    assert "removed 1 image(s); 17 indexed" in capsys.readouterr().out
    assert main(["index", "search", str(query), "-k", "3", *common]) == 0
    assert "gc_wrench.jpg" not in capsys.readouterr().out
    assert main(["index", "add", *common]) == 0
    assert "added 1 image(s); 18 indexed" in capsys.readouterr().out
    assert main(["index", "search", str(query), "-k", "1", *common, "--run", "missing"]) == 2  # no such run


def test_index_build_dtype_int8_on_faiss_and_refused_where_not_stored(tmp_path, tiny_dataset, capsys):
    pytest.importorskip("faiss")
    common = ["--data", str(tiny_dataset), "--workdir", str(tmp_path), "--quiet"]
    query = tiny_dataset / "tools" / "gc_wrench.jpg"
    assert main(["index", "build", "--kind", "faiss-flat", "--dtype", "int8", *common]) == 0
    assert "indexed 18 images (faiss)" in capsys.readouterr().out
    assert main(["index", "search", str(query), "-k", "1", *common]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[3].endswith("gc_wrench.jpg")  # its own photo first
    for kind, message in (
        ("exact", "--dtype int8: the exact index stores float32 or float16"),
        ("auto", "--dtype int8: the exact index stores float32 or float16"),  # 18 photos: auto picks exact
        ("milvus", "--dtype int8: Milvus stores float32"),
    ):
        assert main(["index", "build", "--kind", kind, "--dtype", "int8", *common]) == 2
        assert message in capsys.readouterr().err
    assert main(["index", "search", str(query), "-k", "1", *common]) == 0  # the refused builds left it as it was
    assert capsys.readouterr().out.splitlines()[1].split()[3].endswith("gc_wrench.jpg")


def test_fit_projection_then_evaluate_includes_it(tmp_path, tiny_dataset, capsys):
    common = ["--data", str(tiny_dataset), "--workdir", str(tmp_path), "--quiet"]
    assert main(["fit", "--ranker", "projection", *common]) == 0
    assert "projection.npz" in capsys.readouterr().out
    assert main(["evaluate", *common]) == 0
    assert "\nprojection " in capsys.readouterr().out
    # an approximate index built for the projection is searched with it unless told otherwise
    pytest.importorskip("faiss")
    query = str(tiny_dataset / "tools" / "gc_wrench.jpg")
    assert main(["index", "build", "--kind", "faiss-flat", "--ranker", "projection", *common]) == 0
    capsys.readouterr()
    assert main(["index", "search", query, "-k", "5", *common]) == 0
    default = capsys.readouterr().out
    assert main(["index", "search", query, "-k", "5", "--ranker", "projection", *common]) == 0
    assert capsys.readouterr().out == default
    assert main(["index", "search", query, "-k", "5", "--ranker", "cosine", *common]) == 2  # it serves one ranker


def test_serve_flags_reach_the_upload_limits_and_defaults_stay_the_configured_ones(tiny_dataset):
    from core.config import UPLOAD_LIMITS
    from workbench.cli import get_args_parser, workspace_spec

    parse = get_args_parser().parse_args
    default = workspace_spec(parse(["serve", "--data", str(tiny_dataset)]))
    assert default.config.uploads == UPLOAD_LIMITS  # a flag's default must not loosen the configured limits
    tight = workspace_spec(parse(["serve", "--max-pixels", "5000000", "--max-upload-mb", "2"]))
    assert tight.config.uploads.max_pixels_full == 5_000_000 and tight.config.uploads.max_file_bytes == 2 * 2**20


def test_ranker_takes_several_names_as_the_synopsis_shows(capsys):
    from workbench.cli import get_args_parser

    parser = get_args_parser()
    assert parser.parse_args(["evaluate", "--ranker", "projection", "cosine"]).ranker == ["projection", "cosine"]
    assert parser.parse_args(["evaluate", "--ranker", "l2", "--ranker", "cosine"]).ranker == ["l2", "cosine"]
    assert parser.parse_args(["fit", "--ranker", "svm", "projection"]).ranker == ["svm", "projection"]
    assert main(["evaluate", "--ranker", "cosine", "hamming"]) == 2
    assert "invalid choice: 'hamming'" in capsys.readouterr().err
