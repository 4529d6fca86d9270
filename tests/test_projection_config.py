"""The ``[projection]`` config table: read from TOML, checked with one-line errors naming the file, the table and
the key, and threaded through ``fit`` to the projection ranker's row sample, step cap and torch threads."""

from pathlib import Path

import numpy as np
import pytest
import torch
from test_workflows import FakeFeaturizer, clustered

from core.config import ProjectionConfig, WorkbenchConfig, load_config
from core.errors import WorkbenchError
from core.metric_learning import ProjectionRanker
from workbench import workflows
from workbench.cli import get_args_parser, workspace_spec
from workbench.workspace import Workspace, WorkspaceSpec, configure, prepared_data


def write(tmp_path: Path, text: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "wb.toml"
    path.write_text(text)
    return path


def test_projection_table_sets_and_lifts_the_caps(tmp_path):
    assert load_config(None).projection == ProjectionConfig() == WorkbenchConfig().projection
    config = load_config(
        write(
            tmp_path,
            '[projection]\nmax_train_rows = "none"\nmax_steps = 3000\nthreads = 2\nidentity_weights = [0, 1]\n',
        )
    )
    assert config.projection == ProjectionConfig(
        max_train_rows=None, max_steps=3000, threads=2, identity_weights=(0.0, 1.0)
    )
    assert load_config(write(tmp_path, '[projection]\nmax_steps = "None"\n')).projection.max_steps is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_steps = 0", "max_steps must be >= 1, or none for no cap, got 0"),
        ("max_train_rows = -5", "max_train_rows must be >= 1, or none for no cap, got -5"),
        ("threads = 0", "threads must be >= 1, got 0"),
        ('max_train_rows = "all"', "max_train_rows must be int or \"none\", got 'all'"),
        ("max_steps = 2.5", 'max_steps must be int or "none", got 2.5'),
        ("identity_weights = [0.5, 2]", "identity_weights must be one or more numbers in [0, 1]"),
        ('identity_weights = ["a"]', "identity_weights must be an array of numbers"),
        ("temperature = 0.0", "temperature must be in [0.001, 10]"),
        ("max_rows = 10", "unknown setting(s) max_rows"),
    ],
)
def test_bad_projection_values_name_the_file_table_and_key(tmp_path, text, message):
    path = write(tmp_path, f"[projection]\n{text}\n")
    with pytest.raises(WorkbenchError) as refused:
        load_config(path)
    assert str(refused.value).startswith(f"{path} [projection]: ")
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_the_cli_config_flag_reaches_the_projection_section(tmp_path, tiny_dataset):
    path = write(tmp_path, "[projection]\nmax_steps = 7\n")
    args = get_args_parser().parse_args(["fit", "--data", str(tiny_dataset), "--config", str(path)])
    assert workspace_spec(args).config.projection.max_steps == 7


def fit_counting(
    tmp_path: Path, tiny_dataset: Path, config_text: str, monkeypatch
) -> tuple[ProjectionRanker, list[int], list[int], list[int]]:
    """Fit the projection through ``workflows.fit_ranker`` with a config file; count what the fit did."""
    import core.evaluate

    config_file = write(tmp_path, config_text)
    spec = WorkspaceSpec(configure(config_file, data={"root": tiny_dataset}), tmp_path / "work", backend="torch")
    prepared = prepared_data(spec.config.data, spec.layout)
    embeddings = clustered(prepared.dataset.label_array, 0.5, np.random.default_rng(0))
    ws = Workspace(spec, prepared, FakeFeaturizer("fake-a"), embeddings)  # type: ignore[arg-type]
    steps, sampled, threads = [], [], []
    adam_step, sample, set_threads = torch.optim.Adam.step, core.evaluate.sample_queries, torch.set_num_threads
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: steps.append(1) or adam_step(self, *a, **k))
    monkeypatch.setattr(
        core.evaluate, "sample_queries", lambda q, labels, n, rng: sampled.append(n) or sample(q, labels, n, rng)
    )
    monkeypatch.setattr(torch, "set_num_threads", lambda n: threads.append(n) or set_threads(n))
    fitted = workflows.fit_ranker(ws, "projection")
    ranker = ProjectionRanker.load(fitted.path)
    return ranker, steps, sampled, threads


def test_projection_settings_change_the_fit_through_the_workspace(tmp_path, tiny_dataset, monkeypatch):
    default, steps, sampled, threads = fit_counting(tmp_path / "a", tiny_dataset, "", monkeypatch)
    assert default.config == ProjectionConfig() and not sampled  # 13 training photos: under the 10,000 cap
    assert len(steps) == 2 * 40 and threads[0] == 1  # 40 epochs of one batch, in each of the two training runs
    monkeypatch.undo()

    text = "[projection]\nmax_train_rows = 8\nmax_steps = 3\nthreads = 2\n"
    capped, steps, sampled, threads = fit_counting(tmp_path / "b", tiny_dataset, text, monkeypatch)
    assert (capped.config.max_train_rows, capped.config.max_steps, capped.config.threads) == (8, 3, 2)
    assert sampled == [8] and len(steps) == 2 * 3 and threads[0] == 2
