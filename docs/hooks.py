"""MkDocs hook: pages generated at every build, never edited by hand:

- docs/reference/commands.md, the command reference, from the parser and the registries;
- docs/index.md, the home page: the README, its links made relative to docs/.
"""

from pathlib import Path


def write_if_changed(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def on_pre_build(config, **kwargs):
    from diagnostics.docs import reference_markdown

    docs = Path(config["docs_dir"])
    write_if_changed(docs / "reference" / "commands.md", reference_markdown() + "\n")
    readme = (docs.parent / "README.md").read_text()
    write_if_changed(docs / "index.md", readme.replace("](docs/", "]("))
