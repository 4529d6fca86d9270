"""One home for running the Streamlit app headless in tests (AppTest), shared by the app test modules."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest


def run_app(page: str | None = None, timeout: float = 180) -> AppTest:
    """The app run once (on its first page, then ``page`` when given), with no exception raised."""
    from streamlit.testing.v1 import AppTest  # imported on use: modules without app tests need no streamlit

    app = AppTest.from_file("../streamlit_app.py", default_timeout=timeout)
    app.run()
    if page:
        app.switch_page(page)
        app.run()
    assert not app.exception, app.exception
    return app
