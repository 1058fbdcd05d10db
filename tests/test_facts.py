import pytest

from factlearn.facts import Fact, FactTable, matches


def test_fact_normalises_and_formats():
    f = Fact("Star", " Left   Of ", "CIRCLE")
    assert f.slots == ("star", "left of", "circle")
    assert str(f) == "<star, left of, circle>" and f.order == 3 and f.mask == (1.0, 1.0, 1.0)
    assert Fact.parse("<star, left of, circle>") == f
    assert Fact("star", "").order == 1  # empty slot is a wildcard


@pytest.mark.parametrize("args", [(None,), ("",), ("star", None, "circle")])
def test_invalid_facts(args):
    with pytest.raises(ValueError):
        Fact(*args)


def test_wildcard_matches():
    s, sp, spo = Fact("star"), Fact("star", "red"), Fact("star", "left of", "circle")
    assert matches(s, sp) and matches(s, spo) and matches(s, s)
    assert matches(sp, sp) and not matches(sp, s) and not matches(sp, spo)
    assert matches(spo, spo) and not matches(spo, s)
    assert not matches(s, Fact("circle"))


def test_fact_table_ids_are_stable():
    facts = [Fact("star", "red"), Fact("circle"), Fact("star")]
    a, b = FactTable.from_facts(facts), FactTable.from_facts(reversed(facts))
    assert a.facts == b.facts and a.facts[0].order == 1
    assert FactTable.from_json(a.to_json()).facts == a.facts
    assert a.words() == ["circle", "red", "star"]
