"""The diagnostic suites' pytest plugin (options, grid, reports): see diagnostics/pytest_plugin.py."""

from diagnostics.pytest_plugin import *  # noqa: F401,F403  (hooks and fixtures)
