"""Registers the diagnostic suites' pytest plugin (options, grid parametrization, reports,
baseline checks) for the whole repository: see diagnostics/pytest_plugin.py."""

pytest_plugins = ["diagnostics.pytest_plugin", "pytester"]  # pytester: tests/test_plugin.py
