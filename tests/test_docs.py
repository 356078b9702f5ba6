"""The docs name only commands and options that exist: every `diagnostics COMMAND ...` and
`tox -e ENV -- ...` line in the README and docs/ (code spans and code blocks) is checked against
the CLI's parser (``diagnostics.docs.command_options``) and tox.ini; the command reference is
generated from that same parser."""

import configparser
import re
from pathlib import Path

import pytest

from diagnostics.docs import command_options, reference_markdown

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
GENERATED = {ROOT / "docs" / "index.md", ROOT / "docs" / "reference" / "commands.md"}
# where a command line ends: a pipe, a list, a redirection, a comment, a closing bracket
END = re.compile(r"\s(\||;|&&|>>?|#)\s|[)\]]\s|$")


def code_of(text: str) -> list[str]:
    """Inline code spans and the lines of fenced code blocks."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    rest = re.sub(r"```[^\n]*\n.*?```", "", text, flags=re.S)
    return [ln for b in blocks for ln in b.splitlines()] + re.findall(r"`([^`\n]+)`", rest)


def invocations(code: str, after: str) -> list[tuple[str, list[str]]]:
    """(word after ``after``, the option flags that follow it) for each ``after WORD ...`` in a
    code line; options past a bare `--` belong to pytest and are left out."""
    out = []
    for m in re.finditer(rf"(?:^|[\s(=]){re.escape(after)} ([a-z][\w-]*(?: [a-z][\w-]*)?)(.*)", code):
        word, tail = m.group(1), m.group(2)
        tail = tail[:END.search(tail).start()]
        flags = []
        for tok in tail.split():
            if tok == "--":
                break
            for flag in tok.strip("`,.:'\"[]").split("/"):
                if re.fullmatch(r"--[a-z][\w-]*(=\S*)?|-[a-zA-Z]", flag):
                    flags.append(flag.split("=")[0])
        out.append((word, flags))
    return out


def documented_pages():
    return [p for p in PAGES if p not in GENERATED and p.exists()]


def test_every_documented_diagnostics_command_and_option_exists():
    accepted = command_options()
    problems = []
    for page in documented_pages():
        for code in code_of(page.read_text()):
            for words, flags in invocations(code, "diagnostics"):
                cmd = words if words in accepted else words.split()[0]  # "plot lr", else "run"
                if cmd not in accepted:
                    problems.append(f"{page.relative_to(ROOT)}: `diagnostics {cmd}`: no such command")
                    continue
                problems += [f"{page.relative_to(ROOT)}: `diagnostics {cmd} {f}`: no such option"
                             for f in flags if f not in accepted[cmd]]
    assert not problems, "\n".join(problems)


def test_every_documented_tox_env_exists_and_its_grid_options_too():
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "tox.ini")
    envs = {s.removeprefix("testenv:") for s in ini.sections() if s.startswith("testenv:")}
    run_options = command_options()["run"]
    problems = []
    for page in documented_pages():
        for code in code_of(page.read_text()):
            for m in re.finditer(r"tox -e ([\w,-]+)(?: -- (.*))?", code):
                problems += [f"{page.relative_to(ROOT)}: tox env {e}" for e in m.group(1).split(",") if e not in envs]
                if m.group(2) and m.group(1) in ("cpu", "gpu", "torch213"):  # posargs go to `diagnostics run`
                    for _, flags in invocations("diagnostics run " + m.group(2), "diagnostics"):
                        problems += [f"{page.relative_to(ROOT)}: tox -e {m.group(1)} -- {f}" for f in flags
                                     if f not in run_options]
    assert not problems, "\n".join(problems)


def test_the_checker_sees_a_wrong_option_and_a_wrong_command():
    assert invocations("python -m diagnostics run --grid smoke --bogus -n 2 | tee x", "diagnostics") == \
        [("run", ["--grid", "--bogus", "-n"])]
    assert invocations("diagnostics plot lr --out a.png", "diagnostics") == [("plot lr", ["--out"])]
    assert invocations("diagnostics frobnicate", "diagnostics") == [("frobnicate", [])]
    assert invocations("pytest x -- --junitxml=a", "diagnostics") == []


@pytest.mark.parametrize("command", ["run", "detect", "compare", "release", "changelog", "calibrate"])
def test_the_reference_documents_every_option_of_every_command(command):
    text = reference_markdown()
    section = text.split(f"## `diagnostics {command}`")[1].split("\n## ")[0]
    for flag in command_options()[command] - {"-h", "--help"}:
        assert f"`{flag}`" in section, (command, flag)


def test_the_readme_fits_on_a_screen_or_two():
    assert len((ROOT / "README.md").read_bytes()) <= 12 * 1024
