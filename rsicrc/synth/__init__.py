"""Synthetic before/after change dataset in the LEVIR-CC layout (numpy + Pillow only).

Top-down scenes in the look of LEVIR-CC (bare land and grass, roads with sidewalks, houses with
pitched roofs and shadows, trees, parking lots, pools, ponds) where about half of the pairs
carry 1-3 real changes (houses built or demolished, a road built, trees removed, a parking lot
built, pools added, a pond appearing or a lake drying up), each captioned five times from
LEVIR-CC-vocabulary templates; the other half differ only in light, season, noise, blur and a
small shift. Pure function of the arguments: the same seed gives byte-identical files.

    from rsicrc.synth import synthesize
    synthesize(Path("data/synth"), pairs=2000, seed=0)
"""

from rsicrc.synth.dataset import split_sizes, synthesize
from rsicrc.synth.spec import COUNTS, KINDS, LOCATIONS, Change

__all__ = ["COUNTS", "KINDS", "LOCATIONS", "Change", "split_sizes", "synthesize"]
