"""The one list of the app's pages: file, slug, title, icon, one-line blurb, in teaching order.

The navigation (streamlit_app.py), every page's heading, the Home tour and the tests read it, so
renaming or reordering a page is a one-line change here. Page files live in ``app_pages/`` named
by slug (a folder Streamlit does not treat as legacy ``pages/``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PAGES", "PAGE_DIR", "PageInfo", "heading", "page", "tour"]

PAGE_DIR = "app_pages"


@dataclass(frozen=True)
class PageInfo:
    slug: str  # URL path and file name
    title: str  # without its number
    icon: str
    blurb: str  # one or two sentences for the Home tour
    numbered: bool = True  # the Home page is not a step of the tour

    @property
    def file(self) -> str:
        return f"{PAGE_DIR}/{self.slug}.py"

    @property
    def number(self) -> int | None:
        """1-based position in the tour, or None for the Home page."""
        steps = [p.slug for p in PAGES if p.numbered]
        return steps.index(self.slug) + 1 if self.numbered else None

    @property
    def label(self) -> str:
        """The title as the navigation and the page heading show it: "3 · Attention"."""
        return f"{self.number} · {self.title}" if self.numbered else self.title


PAGES: tuple[PageInfo, ...] = (
    PageInfo("home", "Home: the guided tour", "🏠",
             "The data flow of eq. (1)-(4) with the shapes of this run, and the tour.", numbered=False),
    PageInfo("patches", "Patches", "🧩",
             "The image becomes a grid of P×P patches; the token count changes with P, and the patch "
             "embedding convolution is exactly a linear layer on flattened patches."),
    PageInfo("embeddings", "Embeddings", "🎨",
             "What the model turns patches into: token colours by PCA, the embedding filters and the "
             "position embeddings that learned the 2-D layout (paper Fig. 7)."),
    PageInfo("attention", "Attention", "👀",
             "Click a patch and see where every head looks; follow the CLS token, rollout and the "
             "q·k/√d arithmetic with real numbers."),
    PageInfo("dino", "DINO views", "🦖",
             "What a ViT that learned from photos without labels finds: attention maps per head, parts "
             "in colour across two photos, and whether it has artifact tokens."),
    PageInfo("playground", "Architecture playground", "🛠️",
             "Change patch size, heads, depth and width: parameters, FLOPs, memory and latency, two "
             "models side by side."),
    PageInfo("predict", "Predict", "🎯",
             "Top classes, and which patches the prediction depends on: mask them by clicking, or see "
             "the occlusion map."),
    PageInfo("teach", "Teach it your classes", "🍎",
             "Photograph a few things per class and teach the real ViT in seconds, then see what it "
             "looks at."),
    PageInfo("trust", "Can you trust the map?", "⚖️",
             "Deletion and insertion curves, the randomisation check and baselines for every "
             "explanation."),
    PageInfo("beyond", "Beyond the CLS token", "🧭",
             "Segment and locate with the patch tokens, and swap attention for its alternatives."),
    PageInfo("finetune", "Train from scratch", "🏋️",
             "Train a small ViT on Shapes in about a minute with live curves and the attention timeline."),
)


def page(slug: str) -> PageInfo:
    """The page registered under ``slug``."""
    for info in PAGES:
        if info.slug == slug:
            return info
    raise ValueError(f"no page {slug!r}; pages are {[p.slug for p in PAGES]}")


def heading(slug: str) -> str:
    """The heading a page shows: its navigation label."""
    return page(slug).label


def tour() -> list[PageInfo]:
    """The numbered pages in order."""
    return [p for p in PAGES if p.numbered]
