"""The application layer on top of ``core`` and ``export``: the command line and the app's service module."""
