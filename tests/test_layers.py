"""The layout's arrows: which part of fastfork may import which, checked by
reading every module's imports (at any depth, in functions too).

The map below is the architecture: a part imports only the parts listed for
it, so the arrows point down (the hand-off and the small leaf modules know
nothing above them; the worker side never imports the primary; nothing but
the command line imports the web layer).  A new part needs a line here,
which is the moment to decide where it sits.  Modules are also checked for
import circles, which a map of parts cannot see inside one part.
"""

import ast
import pathlib
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# part -> the parts it may import.  A part is a top-level module or package of
# fastfork; "fastfork" is the package face (fastfork/__init__.py).
ALLOWED = {
    # Leaves: the standard library only.
    "fastfork._version": set(),
    "fastfork.extras": set(),
    "fastfork.tls": set(),
    "fastfork.cpus": set(),
    "fastfork.addresses": set(),
    "fastfork.privileges": set(),
    "fastfork.handoff": set(),
    "fastfork.loops": {"fastfork.extras"},
    # What a person writes -> a setting's value (the settings' converters).
    "fastfork.converters": {"fastfork.addresses", "fastfork.cpus"},
    # The one settings object, built once, read by both roles.
    "fastfork.settings": {"fastfork.converters", "fastfork.handoff", "fastfork.loops"},
    # The operator's side of a running primary: status socket, health and
    # metrics endpoints (it reads a Cluster it is given, never imports one).
    "fastfork.operations": {"fastfork.addresses", "fastfork.extras", "fastfork.handoff"},
    "fastfork.worker": {"fastfork.addresses", "fastfork.extras", "fastfork.handoff",
                        "fastfork.loops", "fastfork.privileges"},
    # The primary forks workers, so it knows how one boots.
    "fastfork.primary": {"fastfork.addresses", "fastfork.cpus", "fastfork.operations",
                         "fastfork.extras", "fastfork.handoff", "fastfork.privileges",
                         "fastfork.settings", "fastfork.worker"},
    "fastfork": {"fastfork._version", "fastfork.addresses", "fastfork.cpus", "fastfork.handoff",
                 "fastfork.primary", "fastfork.settings", "fastfork.worker"},
    # The worker's HTTP engine: below the web layer, beside the worker (it is
    # handed connections through aio.Server, never imports it); it honours the
    # hand-off's switch for the compiled parts.
    "fastfork.engine": {"fastfork.extras", "fastfork.handoff"},
    # --log-format json: each line names the worker it comes from.
    "fastfork.jsonlog": {"fastfork.worker"},
    # Built on the public face, as a user's program is.
    "fastfork.web": {"fastfork", "fastfork.addresses", "fastfork.engine", "fastfork.extras",
                     "fastfork.jsonlog", "fastfork.loops", "fastfork.worker"},
    "fastfork.demo": {"fastfork", "fastfork.settings", "fastfork.worker"},
    # The command line wires both roles: the worker's side of `fastfork run`
    # (loading the app in the worker) is in it too.
    "fastfork.cli": {"fastfork", "fastfork.operations", "fastfork.extras", "fastfork.jsonlog",
                     "fastfork.loops", "fastfork.primary", "fastfork.privileges",
                     "fastfork.settings", "fastfork.tls", "fastfork.web", "fastfork.worker"},
    "fastfork.__main__": {"fastfork.cli"},
}


def module_name(path, root):
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path, name):
    """The fastfork modules ``path`` (module ``name``) imports, resolved."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + is_package]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            # "from .m import x": the module m.x if there is one, else m
            # (graph() keeps the longest prefix that is a module).
            targets = [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        yield from (t for t in targets if t == "fastfork" or t.startswith("fastfork."))


def part(module):
    return ".".join(module.split(".")[:2])


def graph(root):
    """module -> the fastfork modules it imports, for every module under ``root``."""
    package = root / "fastfork"
    names = {module_name(p, root): p for p in package.rglob("*.py")}
    edges = {}
    for name, path in names.items():
        targets = set()
        for target in imports(path, name):
            # "from .pkg import name" names a module or an attribute: the
            # longest prefix that is a module is what gets imported.
            while target not in names and "." in target:
                target = target.rpartition(".")[0]
            if target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def wrong_arrows(edges):
    wrong = []
    for module, targets in sorted(edges.items()):
        source = part(module)
        if source not in ALLOWED:
            wrong.append(f"{module}: part {source} is not in the map (tests/test_layers.py)")
            continue
        for target in sorted(targets):
            # A package's own modules, and a package's __init__ re-exporting them.
            if part(target) != source and part(target) not in ALLOWED[source]:
                wrong.append(f"{module} imports {target}: {source} may not import "
                             f"{part(target)}")
    return wrong


def circles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w.startswith(v + "."):
                continue            # a package importing its own modules
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_arrow_points_where_the_map_allows():
    assert wrong_arrows(graph(ROOT)) == []


def test_no_import_circle():
    assert circles(graph(ROOT)) == []


def test_every_part_in_the_map_exists():
    parts = {part(module) for module in graph(ROOT)}
    assert set(ALLOWED) - parts == set()


@pytest.mark.parametrize("where, planted, expected", [
    ("fastfork/handoff/wire.py", "from ..primary import arbiter",
     "fastfork.handoff.wire imports fastfork.primary.arbiter: fastfork.handoff may not "
     "import fastfork.primary"),
    ("fastfork/worker/runtime.py", "    from fastfork.web import serve",
     "fastfork.worker.runtime imports fastfork.web.serve"),
    ("fastfork/settings.py", "from . import cli",
     "fastfork.settings imports fastfork.cli"),
])
def test_a_planted_upward_import_is_caught(tmp_path, where, planted, expected):
    shutil.copytree(ROOT / "fastfork", tmp_path / "fastfork",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
    path = tmp_path / where
    text = path.read_text()
    if planted.startswith(" "):
        # Inside a function, where a lazy import hides from a top-level look.
        planted = f"def _planted():\n{planted}\n"
    path.write_text(text + "\n" + planted + "\n")
    assert wrong_arrows(graph(ROOT)) == []
    assert any(expected in line for line in wrong_arrows(graph(tmp_path)))


def test_a_planted_circle_is_caught(tmp_path):
    shutil.copytree(ROOT / "fastfork", tmp_path / "fastfork",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
    path = tmp_path / "fastfork" / "handoff" / "credit.py"
    path.write_text(path.read_text() + "\nfrom . import wire\n")
    wire = tmp_path / "fastfork" / "handoff" / "wire.py"
    wire.write_text(wire.read_text() + "\nfrom . import credit\n")
    assert ["fastfork.handoff.credit", "fastfork.handoff.wire"] in circles(graph(tmp_path))
