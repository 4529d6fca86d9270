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
