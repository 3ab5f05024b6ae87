"""The viewer's pages and JSON API over the tiny atlas, the analysis sections that appear once stored, and the
static export with relative links only."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from fastapi.testclient import TestClient

from convscope.atlas import Atlas, Output
from convscope.web import create_site, export


@pytest.fixture(scope="module")
def client(tiny_atlas):
    with TestClient(create_site([tiny_atlas], device="cpu")) as client:
        yield client


def test_pages_and_their_json_say_the_same(client):
    page = client.get("/")
    assert page.status_code == 200 and "conv2" in page.text and "<svg" in page.text
    model = client.get("/api/model").json()
    assert [row["name"] for row in model["layers"] if row["selected"]] == ["conv1", "conv2"]
    assert len(model["class_models"]) == 10 and len(model["dataset"]) == 12
    layer = client.get("/layer/conv2")
    cells = client.get("/api/layer/conv2").json()["cells"]
    assert [c["unit"] for c in cells] == [0, 1, 2, 3, 4]
    for cell in cells:  # every picture the page shows is the one the API names, and it is served
        assert f'src="../{cell["image"]}"' in layer.text
        assert client.get("/" + cell["image"]).status_code == 200
    unit = client.get("/layer/conv1/unit/3")
    data = client.get("/api/layer/conv1/unit/3").json()
    assert [s["kind"] for s in data["sections"]] == ["featvis", "trust", "topk", "purity", "stats", "filter",
                                                     "evolution"]
    assert data["neighbours"] == {"previous": 2, "next": 4}
    for result in data["results"].values():
        for path in result["images"].values():
            assert f'src="../../../{path}"' in unit.text
    assert '"objective": "conv1:[3, 4]"' in unit.text  # the recipe is on the page


def test_unknown_pages_are_404_not_500(client):
    for url in ["/layer/conv9", "/layer/conv1/unit/99", "/layer/conv1/unit/x", "/image/5",
                "/api/layer/conv9", "/api/layer/conv1/unit/-1", "/api/image/5", "/files/featvis/conv1/99.png"]:
        assert client.get(url).status_code == 404, url
    assert "not in this atlas" in client.get("/layer/conv9").text


def test_files_carry_cache_headers(client):
    response = client.get("/files/featvis/conv1/0.png")
    assert response.headers["cache-control"].startswith("public, max-age=") and response.headers.get("etag")
    assert response.headers["content-type"] == "image/png"
    assert client.get("/static/viewer.css").headers["cache-control"].startswith("public")


def test_the_analysis_shows_on_layer_unit_and_image_pages(client):
    layer = client.get("/api/layer/conv2").json()
    assert layer["sortable"] == ["unit", "value", "trust", "mean", "sparsity", "purity"]
    assert layer["stats"]["units"] == 5 and all(c["dead"] is False for c in layer["cells"])
    html = client.get("/layer/conv2").text
    assert 'data-sparsity="' in html and 'data-purity="' in html
    unit = client.get("/layer/conv2/unit/1").text
    for heading in ("Trust figure", "Top images", "Class purity", "Activation statistics"):
        assert heading in unit
    assert "trust figure <b>" in unit and "spatial max" in unit
    assert 'alt="patch 1"' in unit and 'alt="projection 1"' in unit and "<svg class=\"histogram\"" in unit
    top = client.get("/api/layer/conv2/unit/1").json()["results"]["topk"]
    for path in top["images"].values():
        assert client.get("/" + path).status_code == 200


def test_tsne_probes_and_predictions_show_and_link(client):
    overview = client.get("/").text
    probes = {row["name"]: row["probe"] for row in client.get("/api/model").json()["layers"] if row["selected"]}
    assert all(0 < p <= 1 for p in probes.values()) and f"{100 * probes['conv2']:.1f}%" in overview
    assert 'href="tsne"' in overview and "(chance " in overview
    assert client.get("/api/layer/conv2").json()["probe"]["accuracy"] == probes["conv2"]
    grid = client.get("/api/tsne").json()["tsne"]["payload"]
    tsne = client.get("/tsne").text
    assert f"{grid['items']} images of the dataset sample" in tsne
    sample = [d["index"] for d in client.get("/api/model").json()["dataset"]]
    for index in (i for i in grid["cells"] if i is not None):  # every cell is a sample image linking to its page
        assert index in sample and f'href="image/{index}"' in tsne
    image = client.get(f"/image/{sample[1]}").text
    top = client.get(f"/api/image/{sample[1]}").json()["prediction"]["payload"]["top"]
    assert "The model's predictions" in image and top[0]["name"] in image


def test_a_unit_without_a_trust_ratio_says_why(atlas_copy):
    with Atlas(atlas_copy) as atlas:
        trust = atlas.result("trust", "conv2", 3)
        payload = {**trust.payload, "best_dataset_value": -0.25, "ratio": None,
                   "no_ratio": "no dataset image makes the unit fire"}
        atlas.put(Output("trust", "conv2", 3, payload, trust.recipe), "scan")
    with TestClient(create_site([atlas_copy], device="cpu")) as client:
        page = client.get("/layer/conv2/unit/3").text
        assert "no dataset image makes the unit fire (best" in page and "trust figure <b>" not in page
        cells = {c["unit"]: c for c in client.get("/api/layer/conv2").json()["cells"]}
        assert cells[3]["trust"] is None and cells[2]["trust"] is not None
        assert client.get("/layer/conv2").status_code == 200


def test_a_top_image_of_the_sample_links_back_to_its_unit(atlas_copy):
    with Atlas(atlas_copy) as atlas:
        sample = [r.unit for r in atlas.results("dataset_image")]
        top = atlas.result("topk", "conv2", 1)
        top.payload["examples"][1]["index"] = sample[1]  # as if a top image were in the sample
        atlas.put(Output("topk", "conv2", 1, top.payload, top.recipe), "scan")
    with TestClient(create_site([atlas_copy], device="cpu")) as client:
        assert "conv2:1</a> rank 2" in client.get(f"/image/{sample[1]}").text


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append(value)


def test_the_static_export_links_only_to_files_it_holds(tiny_atlas, tmp_path):
    site = export(tiny_atlas, tmp_path / "site")
    pages = sorted(site.rglob("*.html"))
    assert site / "index.html" in pages and site / "layer/conv1/unit/3.html" in pages and site / "tsne.html" in pages
    checked = 0
    for page in pages:
        parser = _Links()
        parser.feed(page.read_text())
        for link in parser.links:
            parts = urlsplit(link)
            assert not parts.scheme and not link.startswith("/"), f"{page}: {link} is not relative"
            target = (page.parent / unquote(parts.path)).resolve()
            assert target.is_file(), f"{page.relative_to(site)} links to missing {link}"
            checked += 1
    assert checked > 100
    assert re.search(r"needs <code>convscope serve", (site / "live.html").read_text())
    assert (site / "api/layer/conv1/unit/3.json").is_file()
