"""The ranker registry, the workdir layout and the workspace spec: the one home of each concept."""

import numpy as np
import pytest
from PIL import Image

from core.errors import ArtifactError, WorkbenchError
from core.rankers import (
    CosineRanker,
    RankerSpec,
    list_rankers,
    make_ranker,
    ranker_spec,
    register_ranker,
)
from core.workdir import PRETRAINED, WorkDir, check_run_name
from workbench.workspace import WorkspaceSpec, configure


def test_registry_lists_rankers_in_menu_order_with_their_properties():
    assert list_rankers() == ["cosine", "l2", "svm", "projection", "l1", "random"]
    assert list_rankers(learned=True) == list_rankers(learned=True, quick_fit=True) == ["svm", "projection"]
    assert list_rankers(learned=False) == ["cosine", "l2", "l1", "random"]
    assert [name for name in list_rankers() if ranker_spec(name).index_servable] == [
        "cosine",
        "l2",
        "svm",
        "projection",
    ]


def test_every_ranker_the_registry_calls_index_servable_gets_an_index_space():
    from core.data import make_comparative_sets
    from core.index import UnsupportedRankerError, space_for

    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 10)
    embeddings = rng.normal(size=(30, 6)) + np.repeat(np.eye(6)[:3] * 3, 10, axis=0)
    embeddings = (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32)
    sets = make_comparative_sets(labels, 5, 10, rng)
    for name in list_rankers():
        spec = ranker_spec(name)
        ranker = spec.build().fit(embeddings, labels, sets) if spec.learned else make_ranker(name)
        if spec.index_servable:
            space_for(ranker)  # raises if the claim were false
        else:
            with pytest.raises(UnsupportedRankerError):
                space_for(ranker)


def test_registry_resolves_names_in_one_place():
    assert isinstance(make_ranker("cosine"), CosineRanker)
    first = make_ranker("random", np.random.default_rng(3)).score(np.ones((1, 4)), np.ones((5, 4)))
    again = make_ranker("random", np.random.default_rng(3)).score(np.ones((1, 4)), np.ones((5, 4)))
    np.testing.assert_array_equal(first, again)  # seeded by the generator passed in
    with pytest.raises(ValueError, match="unknown ranker 'hamming'; choose one of cosine, l2, svm"):
        ranker_spec("hamming")
    with pytest.raises(ValueError, match="'svm' is learned"):
        make_ranker("svm")
    with pytest.raises(ValueError, match="registered twice"):
        register_ranker(RankerSpec("cosine", "again", lambda rng: CosineRanker()))
    with pytest.raises(ValueError, match="needs load"):
        register_ranker(RankerSpec("half-learned", "no loader", lambda rng: CosineRanker(), learned=True))


def test_workdir_keeps_datasets_and_conditions_apart_and_shares_what_can_be_shared(tmp_path):
    base = tmp_path / "artifacts"
    a, b = tmp_path / "shop" / "photos", tmp_path / "other" / "photos"  # same folder name, other folders
    labels, colour, shape = WorkDir(base, a), WorkDir(base, a, "colour"), WorkDir(base, a, "shape")
    assert (
        WorkDir(base, a).root == labels.root and WorkDir(base, tmp_path / "shop" / "." / "photos").root == labels.root
    )
    assert WorkDir(base, b).dataset_dir != labels.dataset_dir
    assert len({labels.root, colour.root, shape.root}) == 3
    assert labels.features == colour.features == shape.features  # same images, same features
    assert (
        labels.onnx_cache == WorkDir(tmp_path / "elsewhere", b).onnx_cache
    )  # same weights, same export: one per machine
    assert colour.ranker("svm", "fp") != labels.ranker("svm", "fp")  # learned for one meaning of "similar" only
    assert labels.ranker("svm", "fp") == labels.root / "rankers" / "fp" / "svm.npz"
    assert labels.prepared.parent == labels.root and labels.run("r1").parent == labels.runs
    assert labels.dataset_dir.name.startswith("photos-")


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", PRETRAINED, " padded"])
def test_bad_run_names_are_refused(name):
    with pytest.raises(ArtifactError, match="plain folder name"):
        check_run_name(name)


def test_configure_applies_file_then_overrides(tmp_path):
    config_file = tmp_path / "c.toml"
    config_file.write_text('[data]\nroot = "photos"\nseed = 4\n\n[svm]\nC = 0.5\n')
    config = configure(config_file, data={"seed": 9, "condition": None}, svm={"C": None})
    assert config.data.root == tmp_path / "photos"  # relative to the file
    assert config.data.seed == 9 and config.svm.C == 0.5  # None keeps the file's value
    with pytest.raises(WorkbenchError, match=r"\[data\]: unknown setting\(s\) sed"):
        configure(None, data={"sed": 1})
    with pytest.raises(WorkbenchError, match="unknown back end 'cuda'"):
        WorkspaceSpec(backend="cuda")  # type: ignore[arg-type]
    with pytest.raises(ArtifactError, match="plain folder name"):
        WorkspaceSpec(run="../x")


def test_an_unfitted_learned_ranker_says_how_to_fit_it(tmp_path, tiny_dataset):
    from workbench.workspace import RankerUnavailableError, open_workspace

    ws = open_workspace(WorkspaceSpec(configure(data={"root": tiny_dataset}), tmp_path, backend="torch"))
    assert ws.rankers_on_offer() == ["cosine", "l2", "l1", "random"]
    with pytest.raises(RankerUnavailableError, match="fit --ranker projection"):
        ws.ranker("projection")
    with pytest.raises(WorkbenchError, match="unknown ranker"):
        ws.search(Image.new("RGB", (64, 64)), "hamming", 3)
    with pytest.raises(WorkbenchError, match="k must be at least 1"):
        ws.search(Image.new("RGB", (64, 64)), "cosine", 0)
    assert ws.layout.prepared.is_file()
