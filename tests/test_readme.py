"""The README's worked example (adding an upsampler with a hyperparameter) runs as written."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "### Adding a variant (worked example)"


def example_code() -> str:
    """The first python block under the worked example's heading."""
    text = README.read_text()
    assert HEADING in text, f"README has no section {HEADING!r}"
    match = re.search(r"```python\n(.*?)```", text[text.index(HEADING):], re.S)
    assert match, "the worked example has no python block"
    return match.group(1)


def test_the_readme_worked_example_runs(monkeypatch):
    module = types.ModuleType("readme_example")  # a real module: dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    code = compile(example_code(), f"{README} (worked example)", "exec", dont_inherit=True)
    exec(code, module.__dict__)  # noqa: S102
    upsamplers, cls = module.upsamplers, module.FixedWidthUpsampler
    assert upsamplers.get("fixed") is cls and "fixed" in upsamplers
    assert upsamplers.build("fixed", object()).config.upsampler_width == 2.0  # no source has it: its default
    from components.upsampler import UPSAMPLERS
    assert "fixed" not in UPSAMPLERS, "the example extends a copy, not the shipped registry"
