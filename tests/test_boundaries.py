"""Layer boundaries and import cost, checked in a fresh interpreter."""

import subprocess
import sys


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(output.split())


def test_core_imports_neither_streamlit_nor_export():
    modules = imported_after("import core.cli, core.pipeline, core.evaluate, core.rankers, core.featurize, core.backbones")
    assert "streamlit" not in modules
    assert not any(name == "export" or name.startswith("export.") for name in modules)


def test_importing_core_is_cheap():
    modules = imported_after("import core, core.cli, core.rankers, core.evaluate, core.data")
    assert "torch" not in modules and "timm" not in modules
