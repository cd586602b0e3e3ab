"""The app's prose: notes read as sentences, and every message names a page by its registered label."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from explorer import registry
from explorer.texts import page_name, sentences

ROOT = Path(__file__).resolve().parent.parent
APP_CODE = sorted((ROOT / "explorer").glob("*.py")) + sorted((ROOT / "app_pages").glob("*.py"))
# "the Teach page", "Fine-tune page": a page named by a word of its own, which goes stale when the registry changes
HAND_NAMED = re.compile(r"\b[A-Z][\w-]*(?: [A-Z][\w-]*)* page\b")


def test_notes_read_as_sentences():
    notes = ["LayerScale is folded into fc2 (exact up to float rounding)",
             "position embedding on its native 37x37 grid (518 px), resampled bicubically",
             "no classification head: the model returns the CLS token's features (384)"]
    assert sentences(notes) == (
        "LayerScale is folded into fc2 (exact up to float rounding). Position embedding on its native 37x37 grid "
        "(518 px), resampled bicubically. No classification head: the model returns the CLS token's features (384).")
    assert sentences("Weights derived from DINOv2 (Apache-2.0)") == "Weights derived from DINOv2 (Apache-2.0)."
    assert sentences(["Done!", "", "  ok? "]) == "Done! Ok?"


def test_page_name_is_the_navigation_label():
    assert page_name("teach") == f"**{registry.page('teach').label}**"
    assert page_name("finetune", markdown=False) == f"“{registry.page('finetune').label}”"
    assert registry.page("teach").label.startswith(f"{registry.page('teach').number} · ")


def _strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal that is not a docstring (f-strings: their literal parts)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_messages_name_pages_by_their_registered_label():
    found = [f"{path.relative_to(ROOT)}:{line}: {m.group(0)!r}" for path in APP_CODE
             for line, text in _strings(path) for m in HAND_NAMED.finditer(text)
             if m.group(0).split()[0] not in ("Every", "Each", "This", "That", "Any", "Another", "One")]
    assert not found, "name the page with explorer.texts.page_name(slug):\n" + "\n".join(found)
