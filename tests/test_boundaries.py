"""Layer boundaries and import cost, checked in a fresh interpreter."""

import subprocess
import sys


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(output.split())


def test_core_imports_neither_streamlit_nor_export_nor_the_app_layer():
    modules = imported_after(
        "import core.pipeline, core.evaluate, core.rankers, core.featurize, core.backbones, core.config, core.data"
    )
    assert "streamlit" not in modules
    for package in ("export", "workbench"):
        assert not any(name == package or name.startswith(f"{package}.") for name in modules)


def test_importing_the_cli_is_cheap():
    modules = imported_after("import core, workbench.cli, core.rankers, core.evaluate, core.data")
    assert "torch" not in modules and "timm" not in modules and "streamlit" not in modules


WEB_AND_UI = ("streamlit", "fastapi", "starlette", "uvicorn", "pydantic")


def test_core_imports_no_ui_or_web_framework():
    modules = imported_after(
        "import core.pipeline, core.evaluate, core.rankers, core.featurize, core.backbones, core.config, core.data, "
        "core.workdir, core.svm, core.siamese, core.train, core.index, core.dedup, core.ingest, core.explain"
    )
    assert not any(name.split(".")[0] in WEB_AND_UI for name in modules)


def test_export_imports_only_core():
    modules = imported_after("import export.onnx_export, export.onnx_featurizer, export.metadata")
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
