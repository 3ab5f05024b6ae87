"""The atlas and the viewer: store, build, resume, pages, safety, browser (fixtures in conftest.py)."""
