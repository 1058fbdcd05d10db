from .towers import resolve_pretrained
from .two_tower import FactModel, create_model, normalize_slots
from .vocab import Vocabulary

__all__ = ["FactModel", "Vocabulary", "create_model", "normalize_slots", "resolve_pretrained"]
