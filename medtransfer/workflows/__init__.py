"""Multi-run work above one bundle: a study of independent runs (:mod:`.study`), the strategy comparison
(:mod:`.compare`) and the bi-directional sweep (:mod:`.sweep`), each ending in a table and a plot."""
