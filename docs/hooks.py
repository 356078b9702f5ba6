"""MkDocs hook: pages generated at every build, never edited by hand:

- docs/reference/commands.md, the command reference, from the parser and the registries;
- docs/index.md, the home page: the README, its links made relative to docs/;
- docs/reference/changelog.md, the committed convergence changelog (reports/releases/), rendered
  from its CSVs as `diagnostics changelog` renders changelog.md (so the docs' table cannot drift
  from the artefact).
"""

from pathlib import Path


def write_if_changed(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


CHANGELOG_PAGE = """# The convergence changelog of torch

Generated at each documentation build from the committed artefact, `reports/releases/`
(`changelog.csv`, `explain.csv`, each release's `env.csv` and `runs.csv`); how it is made and read:
[Releases and the changelog](../concepts/releases.md).

"""


PARALLEL_SECTION = """

## The parallel axis: DDP and FSDP2

The distributed part of the grid (`--grid parallel`: gpt and ResNet x AdamW and SGD x fp32 and bf16
x one process, DDP and FSDP2 x full and right-padded batches; [Distributed
training](../concepts/parallel.md)), judged release by release from `reports/releases/parallel/`.

"""


def on_pre_build(config, **kwargs):
    from diagnostics.present.changelog import render
    from diagnostics.docs import reference_markdown

    docs = Path(config["docs_dir"])
    write_if_changed(docs / "reference" / "commands.md", reference_markdown() + "\n")
    readme = (docs.parent / "README.md").read_text()
    write_if_changed(docs / "index.md", readme.replace("](docs/", "]("))
    committed = docs.parent / "reports" / "releases"
    page = CHANGELOG_PAGE + render(committed).replace("## Convergence changelog", "## Summary", 1)
    distributed = committed / "parallel"  # the parallel axis's changelog, its own sessions beside
    if (distributed / "changelog.csv").exists():
        page += PARALLEL_SECTION + render(distributed).replace("## Convergence changelog", "### Summary", 1)
    write_if_changed(docs / "reference" / "changelog.md", page)
