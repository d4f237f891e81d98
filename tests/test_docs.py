"""The documentation stays true of the code."""
from pathlib import Path

import pytest

from cubefit.config import Config

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_configuration_page_lists_every_knob_with_its_default():
    text = (DOCS / "configuration.md").read_text()
    for group, env, value, default, doc in Config.from_env(environ={}).describe():
        shown = default if default != "" else "(empty)"
        assert f"| `{env}` | `{shown}` | {doc} |" in text, env


def test_readme_python_example_runs(tmp_path, monkeypatch):
    import re
    readme = (DOCS.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "galaxy.h5").exists()


def _python_blocks(text):
    import re
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")
                                         if _python_blocks(p.read_text())))
def test_docs_examples_run(page, tmp_path, monkeypatch, small_mock):
    """Every ```python block of a page runs, in order, in a folder holding a populated
    galaxy.h5 (pages that make their own file overwrite it)."""
    from test_store import _populated
    blocks = _python_blocks((DOCS / page).read_text())
    _populated(tmp_path, small_mock, name="galaxy.h5")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{page}[{i}]", "exec"), namespace)


def test_user_facing_text_cites_only_the_repository():
    """Users have the repository, not the developers' design notes: the README, the docs,
    every docstring and every --help text name no file outside the repository."""
    import re

    from cubefit import cli
    root = DOCS.parent
    texts = {p: p.read_text(encoding="utf-8") for p in
             [root / "README.md", *DOCS.rglob("*.md"), *(root / "src").rglob("*.py")]}
    parser = cli.build_parser()
    actions = [a for a in parser._actions if a.choices and isinstance(a.choices, dict)]
    helps = [parser.format_help()] + [sp.format_help() for a in actions for sp in a.choices.values()]
    texts["cubefit --help"] = "\n".join(helps)
    outside = re.compile(r"DESIGN(\.md| §)|\.\./shared|shared/seeds")
    bad = {str(k): m.group(0) for k, t in texts.items() if (m := outside.search(t))}
    assert not bad, bad
