"""End to end in a real browser (Debian's Chromium, headless, through Playwright): click from the model to a layer
to a unit and check that every picture loaded; from the t-SNE grid to an image's predictions; upload a photo on the
live page and see its maps appear.

Screenshots go to $CONVSCOPE_SCREENSHOTS (default: a temporary folder). The README's screenshots are these tests
run on the demo atlas:
    CONVSCOPE_VIEWER_ATLAS=atlas/fashion-cnn CONVSCOPE_SCREENSHOTS=docs/viewer pytest tests/atlas_viewer/test_web_browser.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from convscope.web import create_site

LOADED = """async () => {
    const images = Array.from(document.images);
    await Promise.all(images.map(i => { i.loading = "eager"; return i.decode().catch(() => null); }));
    return images.map(i => [i.getAttribute("src"), i.naturalWidth]);
}"""


@pytest.fixture(scope="module")
def viewer(server, serving):
    chosen = os.environ.get("CONVSCOPE_VIEWER_ATLAS")
    if not chosen:
        yield server
        return
    served = serving(create_site([chosen]))
    yield served
    served.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("CONVSCOPE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    yield page
    context.close()


def _all_loaded(page) -> int:
    images = page.evaluate(LOADED)
    broken = [src for src, width in images if width == 0]
    assert not broken, f"{page.url}: pictures that did not load: {broken[:5]}"
    return len(images)


def test_overview_layer_unit_pictures_load(viewer, page, shots):
    page.goto(viewer.url)
    assert page.locator("svg.graph").count() == 1
    assert _all_loaded(page) > 5
    page.screenshot(path=str(shots / "overview.png"), full_page=True)

    page.locator("table.layers").first.locator("a").last.click()  # the deepest layer of the atlas
    page.wait_for_selector("#units a.cell")
    layer_url = page.url
    assert _all_loaded(page) >= 3
    page.select_option("#sort-key", "value")
    page.select_option("#sort-dir", "desc")
    values = [float(v) for v in page.eval_on_selector_all("#units a.cell", "cells => cells.map(c => c.dataset.value)")]
    assert values == sorted(values, reverse=True)  # the grid sorted itself, in the browser
    page.screenshot(path=str(shots / "layer.png"), full_page=True)

    page.locator("#units a.cell").nth(1).click()
    page.wait_for_selector("section.result.featvis img")
    assert page.url.startswith(layer_url + "/unit/")
    assert _all_loaded(page) >= 2
    page.screenshot(path=str(shots / "unit.png"), full_page=True)
    page.locator("a[rel=next], a[rel=prev]").first.click()
    page.wait_for_selector("section.result.featvis img")
    assert _all_loaded(page) >= 2
    assert page.errors == []


def test_tsne_grid_links_to_an_image_and_its_predictions(viewer, page, shots):
    page.goto(viewer.url)
    page.locator('a[href="tsne"]').first.click()
    page.wait_for_selector("table.tsne a img")
    cells = page.locator("table.tsne a")
    assert cells.count() >= 5 and _all_loaded(page) >= cells.count()
    page.screenshot(path=str(shots / "tsne.png"), full_page=True)
    cells.nth(cells.count() // 2).click()
    page.wait_for_selector("table.predictions")
    assert "/image/" in page.url and _all_loaded(page) >= 1
    assert page.locator("table.predictions tr").count() >= 2
    page.screenshot(path=str(shots / "image.png"), full_page=True)
    assert page.errors == []


def test_live_page_upload_shows_the_maps(viewer, page, shots, photo, tmp_path):
    page.goto(viewer.url + "live")
    broken = tmp_path / "broken.png"
    broken.write_bytes(Path(photo).read_bytes()[:3000])
    page.set_input_files("#file", str(broken))
    page.wait_for_selector("#message:not([hidden])")
    assert "damaged or truncated" in page.inner_text("#message")

    page.set_input_files("#file", str(photo))
    page.wait_for_function("document.querySelectorAll('.maps .job img').length === 5", timeout=180_000)
    page.wait_for_selector("#activations img")
    page.wait_for_selector("#predictions table")
    assert page.locator("#message").is_hidden()
    assert _all_loaded(page) >= 7
    assert page.locator(".job.failed").count() == 0
    page.screenshot(path=str(shots / "live.png"), full_page=True)
    assert page.errors == []
