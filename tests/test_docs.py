"""The documentation stays true of the code."""
from pathlib import Path

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
