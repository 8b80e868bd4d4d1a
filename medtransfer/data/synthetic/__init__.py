"""SYNTHETIC demo sets in the real file layouts (BUSI, Kermany chest X-ray, LiTS CT, POCUS, a natural-image stand-in).

Nothing here is medical data or a real photograph. Each generator writes its set through the same layout the real
reader expects, so bundles run end to end out of the box; a seed always gives byte-identical files, and
``ensure_synthetic_*`` regenerates a set only when it is missing, incomplete or made with other parameters
(:mod:`~medtransfer.data.synthetic.demo_set`). The readers themselves live in :mod:`medtransfer.data`.
"""

from medtransfer.data.synthetic.busi import ensure_synthetic_busi, make_synthetic_busi
from medtransfer.data.synthetic.kermany import ensure_synthetic_kermany, make_synthetic_kermany
from medtransfer.data.synthetic.lits import ensure_synthetic_lits, make_synthetic_lits
from medtransfer.data.synthetic.pocus import ensure_synthetic_pocus, make_synthetic_pocus
from medtransfer.data.synthetic.shapes import ensure_synthetic_shapes, make_synthetic_shapes

__all__ = [
    "ensure_synthetic_busi",
    "ensure_synthetic_kermany",
    "ensure_synthetic_lits",
    "ensure_synthetic_pocus",
    "ensure_synthetic_shapes",
    "make_synthetic_busi",
    "make_synthetic_kermany",
    "make_synthetic_lits",
    "make_synthetic_pocus",
    "make_synthetic_shapes",
]
