"""The README's Security section says what runs code and what is read as data, for every input
nasprobe takes: checked against the section's text and, for ``--model``, against behaviour."""

from __future__ import annotations

import re
from pathlib import Path

from nasprobe.frameworks.model_spec import call_model_spec

ROOT = Path(__file__).resolve().parents[2]


def security_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Security\n(.*?)^## ", text, flags=re.S | re.M)
    assert match, "README has no Security section"
    return match.group(1)


def test_every_kind_of_input_is_covered():
    text = security_section()
    for needle in ("**ONNX**", "**PyTorch**", "**Keras**", "**JAX**", "**Orbax**",
                   "**Probe sets**", "**Training logs**", "**Remote URLs**",
                   "Hostile ONNX graphs", "NASPROBE_DISABLE_PLUGINS"):
        assert needle in text, needle


def test_model_is_named_as_running_code():
    text = security_section()
    assert "the one switch that runs code from a file" not in text
    assert "Two things do run code" in text and "**`--model MODULE:CALLABLE`**" in text
    assert re.search(r"`MODULE` may be a path to a `\.py` file", text)


def test_model_given_as_a_file_does_run_it(tmp_path):
    """What the section warns about: naming a .py file executes its top level."""
    marker = tmp_path / "ran.txt"
    script = tmp_path / "net.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('top level ran')\n"
                      "def make():\n    return 'built'\n")
    assert call_model_spec(f"{script}:make") == "built"
    assert marker.read_text() == "top level ran"
