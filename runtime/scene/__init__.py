"""Whole scenes (DESIGN §12): two large rasters as a source of tiles, captioned into GIS features.

    grid.py        tiles of the before grid (edge tiles moved inwards) and the valid tile sizes
    source.py      both rasters open, the after date aligned (WarpedVRT), windows read lazily
    radiometry.py  the scene-wide 8-bit stretch
    model.py       the one place the exported model is opened and called
    gate.py        the cheap changed/unchanged decision before decoding
    features.py    tiles -> RFC 7946 polygons and properties
    output.py      GeoJSON / GeoPackage, written atomically
    quicklook.py   the after date with the features outlined and numbered
    options.py     SceneOptions (defaults) and SceneReport
    run.py         caption_scene: the tile loop
"""

from rsicrc.runtime.scene.options import SceneOptions, SceneReport
from rsicrc.runtime.scene.run import caption_scene

__all__ = ["SceneOptions", "SceneReport", "caption_scene"]
