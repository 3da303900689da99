"""engine/ is the model and streaming core: it imports no I/O layer and holds no command-line tool."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS_ABOVE_ENGINE = ("mm2face.realtime", "mm2face.viewer", "mm2face.training", "mm2face.benchmarks")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module an ``import`` / ``from ... import`` names in ``path`` (top level or inside functions)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:                        # relative: resolve against mm2face.engine
                base = "mm2face.engine" if node.level == 1 else "mm2face"
                out.append((node.lineno, f"{base}.{node.module}" if node.module else base))
            else:
                out.append((node.lineno, node.module or ""))
    return out


def test_scanner_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef f():\n    from mm2face.viewer.output import write_mp4\n    from ..realtime import x\n")
    assert [m for _, m in imported_modules(f)] == ["os", "mm2face.viewer.output", "mm2face.realtime"]


def test_engine_imports_no_io_layer():
    bad = [f"{p.relative_to(ROOT)}:{line} imports {mod}"
           for p in sorted((ROOT / "engine").rglob("*.py"))
           for line, mod in imported_modules(p)
           if mod.startswith(LAYERS_ABOVE_ENGINE)]
    assert not bad, "engine/ must not import realtime/, viewer/, training/ or benchmarks/: " + "; ".join(bad)


def test_engine_has_no_command_line_tools():
    """CLIs live with the layer they drive (pyproject's console scripts point outside engine/)."""
    clis = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "engine").rglob("*.py"))
            if any(mod == "argparse" for _, mod in imported_modules(p))]
    assert not clis, f"command-line code in engine/: {clis}"
    scripts = (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
    assert "mm2face.engine." not in scripts, scripts
