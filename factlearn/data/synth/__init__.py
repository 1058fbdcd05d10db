"""The built-in "shape world": a deterministic renderer of fact images.

The world stands in for real fact data sets (6DS, Sherlock) so that everything runs offline:
every image shows one fact of shapes, colours, textures, sizes and spatial relations, and the
same seed and options give byte-identical files. Read it in this order:

* :mod:`.vocabulary`: the world's words, which facts they make, their semantic groups and the
  seeded sample of facts (:func:`sample_facts`);
* :mod:`.shapes`: the geometry of the shapes;
* :mod:`.render`: one image of one fact (:func:`render_image`) and the difficulty knobs;
* :mod:`.world`: a whole world written as a data directory (:func:`generate_world`, what
  ``factlearn synth`` runs) and its size presets.
"""

from .render import KNOBS, render_image
from .vocabulary import (ANGULAR_SHAPES, COLOURS, CONVERSE, RELATIONS, ROUND_SHAPES, SHAPES, SIZES, TEXTURES,
                         fact_group, max_facts, sample_facts)
from .world import PRESETS, generate_world

__all__ = ["ANGULAR_SHAPES", "COLOURS", "CONVERSE", "KNOBS", "PRESETS", "RELATIONS", "ROUND_SHAPES", "SHAPES",
           "SIZES", "TEXTURES", "fact_group", "generate_world", "max_facts", "render_image", "sample_facts"]
