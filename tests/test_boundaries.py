"""Layer boundaries and import cost, each checked in a fresh interpreter (all started at once)."""

import subprocess
import sys
from functools import cache

STATEMENTS = {
    "core": "import core.pipeline, core.evaluate, core.rankers, core.featurize, core.backbones, core.config, core.data",
    "cli": "import core, workbench.cli, core.rankers, core.evaluate, core.data",
    "core_all": "import core.pipeline, core.evaluate, core.rankers, core.featurize, core.backbones, core.config, "
    "core.data, core.workdir, core.svm, core.train, core.index, core.dedup, core.ingest, core.explain",
    "export": "import export.onnx_export, export.onnx_featurizer, export.metadata",
}


@cache
def _all_imports() -> dict[str, set[str]]:
    running = {
        key: subprocess.Popen(
            [sys.executable, "-c", f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for key, statement in STATEMENTS.items()
    }
    results = {}
    for key, process in running.items():
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, key
        results[key] = set(output.split())
    return results


def imported_after(key: str) -> set[str]:
    """Modules loaded in a fresh interpreter by ``STATEMENTS[key]``."""
    return _all_imports()[key]


def test_core_imports_neither_streamlit_nor_export_nor_the_app_layer():
    modules = imported_after("core")
    assert "streamlit" not in modules
    for package in ("export", "workbench"):
        assert not any(name == package or name.startswith(f"{package}.") for name in modules)


def test_importing_the_cli_is_cheap():
    modules = imported_after("cli")
    assert "torch" not in modules and "timm" not in modules and "streamlit" not in modules


WEB_AND_UI = ("streamlit", "fastapi", "starlette", "uvicorn", "pydantic")


def test_core_imports_no_ui_or_web_framework():
    modules = imported_after("core_all")
    assert not any(name.split(".")[0] in WEB_AND_UI for name in modules)


def test_export_imports_only_core():
    modules = imported_after("export")
    assert not any(name.split(".")[0] in (*WEB_AND_UI, "workbench", "pages") for name in modules)


def _imports(path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_pages_import_only_streamlit_and_the_service_layer():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for page in [*sorted((root / "pages").glob("*.py")), root / "streamlit_app.py"]:
        for name in _imports(page):
            assert name.split(".")[0] in ("streamlit", "pages", "workbench", "__future__"), (page.name, name)
            if name.startswith("workbench"):
                assert name in ("workbench", "workbench.service"), (page.name, name)
