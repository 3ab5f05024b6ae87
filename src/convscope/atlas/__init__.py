"""The atlas: everything convscope can say about a model, computed once into one folder and browsed in the viewer.

    from convscope import atlas
    report = atlas.build(atlas.BuildConfig("convscope:fashion-cnn", data="fashion-mnist", units="all"), "atlas/")
    atlas.check("atlas/").ok
    with atlas.Atlas("atlas/", readonly=True) as a:
        a.result("featvis", "conv2", 5).images["image"]      # 'files/featvis/conv2/5.png'

A folder holds `atlas.sqlite` (WAL; schema versioned, see `_schema`) and image files below `files/`, with relative
paths only. A build is a list of stages (`stages.STAGES`, extended with `register_stage`), each storing one kind of
result (`kinds.KINDS`) one unit at a time, atomically, so a killed build resumes and ends identical.
"""

from .build import BuildConfig, BuildReport, build
from .check import CheckReport, check
from .kinds import KINDS, Kind
from .stages import STAGES, Stage, StageContext, register_stage
from .store import Atlas, AtlasError, Output, StoredResult

__all__ = ["Atlas", "AtlasError", "BuildConfig", "BuildReport", "CheckReport", "KINDS", "Kind", "Output", "STAGES",
           "Stage", "StageContext", "StoredResult", "build", "check", "register_stage"]
