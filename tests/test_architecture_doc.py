"""docs/architecture.md's picture is drawn from the code: every name on it must exist."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("draw_architecture", ROOT / "scripts" / "draw_architecture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_name_on_the_picture_is_in_the_code():
    assert _script().check_names() == []


def test_the_doc_shows_the_picture_the_script_writes():
    script = _script()
    assert script.OUT.exists()
    assert f"img/{script.OUT.name}" in (ROOT / "docs" / "architecture.md").read_text()
