"""The built-in "shape world": a deterministic renderer of fact images.

The world stands in for real fact data sets (6DS, Sherlock) so that everything runs offline:
every image shows one fact of shapes, colours, textures, sizes and spatial relations, and the
same seed and options give byte-identical files. The large world (preset ``lsc``) is the same
renderer over a far larger, generated vocabulary (about 1,100 subjects, 40 attributes, 14
relation words; 8 million facts), at the scale of the LSC data set. Read it in this order:

* :mod:`.vocabulary`: the world's words (the large world's too), which facts they make, their
  semantic groups (and the opt-in topic group) and the seeded sample of facts (:func:`sample_facts`);
* :mod:`.lsc`: the large world's seeded sample of facts (:func:`sample_lsc_facts`), drawn without
  listing its millions of facts;
* :mod:`.shapes`: the geometry of the shapes, and of the large world's compound subjects;
* :mod:`.styles`: rendering styles, the same scenes under another condition;
* :mod:`.render`: one image of one fact (:func:`render_image`) and the difficulty knobs;
* :mod:`.disjoint`: the facts of other worlds that ``--exclude`` leaves out, and the check that
  two worlds share none (:func:`world_facts`, :func:`shared_facts`);
* :mod:`.world`: a whole world written as a data directory (:func:`generate_world`, what
  ``factlearn synth`` runs) and its presets, the pretraining world ``base`` and the large world
  ``lsc`` among them.
"""

from .disjoint import shared_facts, world_facts
from .lsc import lsc_max_facts, sample_lsc_facts
from .render import KNOBS, render_image
from .styles import STYLES
from .vocabulary import (ANGULAR_SHAPES, COLOURS, CONVERSE, LSC_COLOURS, LSC_RELATIONS, LSC_SIZES, LSC_SUBJECTS,
                         LSC_TEXTURES, RELATIONS, ROUND_SHAPES, SHAPES, SIZES, TEXTURES, TOPIC, TOPIC_SHAPES, converse,
                         fact_group, max_facts, sample_facts, split_subject, topic_count)
from .world import PRESETS, generate_world

__all__ = ["ANGULAR_SHAPES", "COLOURS", "CONVERSE", "KNOBS", "LSC_COLOURS", "LSC_RELATIONS", "LSC_SIZES",
           "LSC_SUBJECTS", "LSC_TEXTURES", "PRESETS", "RELATIONS", "ROUND_SHAPES", "SHAPES", "SIZES", "STYLES",
           "TEXTURES", "TOPIC", "TOPIC_SHAPES", "converse", "fact_group", "generate_world", "lsc_max_facts",
           "max_facts", "render_image", "sample_facts", "sample_lsc_facts", "shared_facts", "split_subject",
           "topic_count", "world_facts"]
