"""realtime/dispatch.py: one table from message type to handler, covering every control message."""
import ast
from pathlib import Path

from mm2face.realtime import protocol as P
from mm2face.realtime.dispatch import Dispatcher

ROOT = Path(__file__).resolve().parents[1]


class _HubStub:
    pass


def test_every_message_type_has_exactly_one_handler():
    d = Dispatcher(_HubStub())
    assert set(d.handlers) == set(P.MESSAGE_TYPES.values())
    assert all(callable(h) for h in d.handlers.values())


def test_dispatch_is_a_table_not_an_isinstance_chain():
    tree = ast.parse((ROOT / "realtime" / "dispatch.py").read_text())
    chains = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "isinstance"
              and len(n.args) == 2 and isinstance(n.args[1], ast.Attribute) and getattr(n.args[1].value, "id", "") == "P"]
    assert not chains, f"isinstance(msg, P.<Message>) at lines {chains}: add the type to Dispatcher.handlers instead"
