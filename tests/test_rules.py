"""Server rules, checked on the source of the app (explorer/, app_pages/, streamlit_app.py).

- Every ``st.session_state`` key and every widget ``key=`` in the page scripts comes from
  ``explorer/state.py``: no string literal (or f-string) is used as a key, and no key's value is
  spelled out anywhere in a page.
- No app code reseeds a global random number generator (torch, NumPy, ``random``): the server
  runs many sessions' threads in one process, so a reseed in one changes everyone's dropout,
  augmentation and sampling. Training from the app passes ``seed=None`` (``FitOptions``' default
  is 0, which reseeds torch's global RNG).
"""

from __future__ import annotations

import ast
from pathlib import Path

from explorer import state as S

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "app_pages").glob("*.py"))
APP_CODE = sorted((ROOT / "explorer").glob("*.py")) + PAGES + [ROOT / "streamlit_app.py"]

STATE_VALUES = {value: name for name, value in vars(S).items() if name.isupper() and isinstance(value, str)}
GLOBAL_SEEDERS = {"torch.manual_seed", "torch.seed", "torch.random.manual_seed", "torch.random.seed",
                  "torch.cuda.manual_seed", "torch.cuda.manual_seed_all", "np.random.seed", "numpy.random.seed",
                  "random.seed", "torch.use_deterministic_algorithms"}
SEEDER_IMPORTS = {("torch", "manual_seed"), ("torch", "seed"), ("torch.random", "manual_seed"),
                  ("torch.random", "seed"), ("random", "seed"), ("numpy.random", "seed")}
TRAINING_CALLS = {"fit", "FitOptions"}  # vitcore.train: FitOptions.seed defaults to 0 (a global reseed)


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a Name/Attribute chain, "" for anything else (a call in the chain, a subscript)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    return ".".join([node.id, *reversed(parts)])


def _is_literal_key(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)) or isinstance(node, ast.JoinedStr)


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (they may name keys in prose)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def literal_keys(source: str, where: str = "<source>") -> list[str]:
    """Every place in ``source`` (a page script) that spells a session-state or widget key as a literal."""
    tree = ast.parse(source)
    aliases = {"st.session_state"}  # names bound to the session state (``ss = st.session_state``)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _dotted(node.value) == "st.session_state":
            aliases.update(_dotted(t) for t in node.targets if _dotted(t))
    docstrings = _docstrings(tree)
    in_tuples = {id(e) for node in ast.walk(tree) if isinstance(node, ast.Tuple) for e in node.elts}  # cache keys
    found = []

    reported: set[int] = set()

    def report(node: ast.AST, what: str) -> None:
        reported.add(id(node))
        found.append(f"{where}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "key" and _is_literal_key(kw.value):
                    report(kw.value, f"widget key={ast.unparse(kw.value)}")
            func = node.func
            if (isinstance(func, ast.Attribute) and _dotted(func.value) in aliases
                    and func.attr in ("get", "setdefault", "pop", "__getitem__", "__setitem__")
                    and node.args and _is_literal_key(node.args[0])):
                report(node, f"session_state.{func.attr}({ast.unparse(node.args[0])})")
        elif isinstance(node, ast.Subscript) and _dotted(node.value) in aliases and _is_literal_key(node.slice):
            report(node, f"session_state[{ast.unparse(node.slice)}]")
        elif isinstance(node, ast.Compare) and _is_literal_key(node.left) and any(
                _dotted(c) in aliases for c in node.comparators):
            report(node, f"{ast.unparse(node.left)} in session_state")
        elif isinstance(node, ast.Attribute) and _dotted(node.value) in aliases and node.attr not in (
                "get", "setdefault", "pop", "keys", "items", "values", "to_dict", "update", "clear"):
            report(node, f"session_state.{node.attr} (attribute access spells the key)")
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in STATE_VALUES
                and id(node) not in docstrings and id(node) not in reported and id(node) not in in_tuples):
            report(node, f"{node.value!r} spelled out (use S.{STATE_VALUES[node.value]})")
    return found


def global_reseeds(source: str, where: str = "<source>") -> list[str]:
    """Calls in ``source`` that reseed a global RNG, or train with vitcore without ``seed=None``."""
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.update(alias.asname or alias.name for alias in node.names
                            if (node.module, alias.name) in SEEDER_IMPORTS)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in GLOBAL_SEEDERS or name in imported:
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)[:80]} reseeds a global RNG; use a private "
                         "torch.Generator / np.random.default_rng")
        if name.rsplit(".", 1)[-1] in TRAINING_CALLS:
            if name.endswith("fit") and (len(node.args) >= 3 or any(kw.arg == "options" for kw in node.keywords)):
                continue  # fit(model, data, options): the FitOptions(...) call that built them is checked
            seed = next((kw.value for kw in node.keywords if kw.arg == "seed"), None)
            if isinstance(seed, ast.Constant) and seed.value is None:
                continue
            if seed is None:
                if not any(kw.arg is None for kw in node.keywords):  # FitOptions' default seed is 0
                    found.append(f"{where}:{node.lineno}: {name}() without seed=None reseeds torch's global RNG")
            elif not (isinstance(seed, ast.Attribute) and seed.attr == "seed" and "option" in _dotted(seed.value)):
                # only None, or the seed of options built (and checked) elsewhere: options.seed
                found.append(f"{where}:{node.lineno}: {name}(seed={ast.unparse(seed)}) reseeds torch's global RNG "
                             "unless it is None; pass seed=None")
    return found


# --------------------------------------------------------------------------- the checkers can fail
def test_the_key_checker_finds_every_kind_of_literal_key():
    bad = (
        "import streamlit as st\n"
        "ss = st.session_state\n"
        "st.button('Go', key='go')\n"
        "st.slider('x', key=f'x_{i}')\n"
        "st.session_state['a'] = 1\n"
        "ss.get('b')\n"
        "if 'c' in ss: pass\n"
        "st.session_state.d = 2\n"
        f"value = {S.LAYER!r}\n"
    )
    found = literal_keys(bad)
    assert len(found) == 7, found
    good = ("import streamlit as st\nfrom explorer import state as S\nss = st.session_state\n"
            "st.button('Go', key=S.TEACH_START)\nss[S.LAYER] = ss.get(S.HEAD)\nst.caption('a key-free text')\n")
    assert literal_keys(good) == []


def test_the_reseed_checker_finds_global_seeding_and_default_seeds():
    bad = ("import torch, random\nimport numpy as np\nfrom torch import manual_seed\n"
           "torch.manual_seed(0)\nnp.random.seed(1)\nrandom.seed(2)\nmanual_seed(3)\n"
           "FitOptions(epochs=2)\nfit(model, data, seed=0)\nfit(model, data, seed=request.seed)\n")
    assert len(global_reseeds(bad)) == 7, global_reseeds(bad)
    good = ("import torch\ng = torch.Generator().manual_seed(0)\nrng = np.random.default_rng(0)\n"
            "FitOptions(epochs=2, seed=None)\nfit(model, data, options)\nfit(model, data, seed=None)\n"
            "fit(cnn, data, epochs=2, seed=options.seed)\n")
    assert global_reseeds(good) == []  # fit(model, data, options): checked where the options are built


# --------------------------------------------------------------------------- the rules
def test_state_keys_are_unique():
    names_by_value: dict[str, list[str]] = {}
    for name, value in vars(S).items():
        if name.isupper() and isinstance(value, str):
            names_by_value.setdefault(value, []).append(name)
    assert not {v: n for v, n in names_by_value.items() if len(n) > 1}


def test_pages_spell_no_session_key_as_a_literal():
    found = [hit for path in PAGES for hit in literal_keys(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "name these keys in explorer/state.py and import them:\n" + "\n".join(found)


def test_no_app_code_reseeds_a_global_rng():
    found = [hit for path in APP_CODE for hit in global_reseeds(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "\n".join(found)

