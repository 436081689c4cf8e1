"""The UI opens in a real browser (Debian's chromium) and shows its five tabs."""

from __future__ import annotations

import pytest

TAB_LABELS = ["Text to Image", "Image to Image", "Upscale 4x", "PNG Info", "Settings"]

pytestmark = pytest.mark.browser


def test_the_five_tabs_are_visible(demo_app, page, artifacts_dir):
    page.goto(demo_app.url, wait_until="domcontentloaded")
    for label in TAB_LABELS:
        tab = page.get_by_role("tab", name=label, exact=True)
        tab.wait_for(state="visible", timeout=60_000)
        assert tab.is_visible(), f"tab {label!r} is not visible"
    page.screenshot(path=str(artifacts_dir / "smoke-tabs.png"), full_page=True)

    # Every tab opens: clicking it selects it.
    for label in reversed(TAB_LABELS):
        tab = page.get_by_role("tab", name=label, exact=True)
        tab.click()
        assert tab.get_attribute("aria-selected") == "true", f"tab {label!r} did not open"
