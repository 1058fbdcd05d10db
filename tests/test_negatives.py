"""Negatives that scale (loss.negatives): the per-batch wildcard exclusion equals the old F x F rule,
``all`` trains as before, and ``sampled`` trains against the batch's facts plus K drawn ones only,
resuming bit-identically."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from test_resume import Crash, assert_same_run, config_file, crash_on_call

import factlearn.run
import factlearn.training.task
from factlearn.config import load_config
from factlearn.errors import UserError
from factlearn.facts import Fact, FactTable, matches
from factlearn.model import FactModel
from factlearn.training import train
from factlearn.training.session import Session, Wildcards
from factlearn.training.task import sample_facts, step_generator


def slow_exclude(table: FactTable, facts: list[int]) -> torch.Tensor:
    """The F x F rule as the session computed it before (a Python double loop): the reference."""
    return torch.tensor(
        [[a != b and (matches(table[a], table[b]) or matches(table[b], table[a])) for b in facts] for a in facts]
    )


def random_table(seed: int, n: int) -> FactTable:
    """Facts of all three orders over a small vocabulary, so many share S and (S, P)."""
    rng = random.Random(seed)
    facts: set[Fact] = set()
    while len(facts) < n:
        s, p, o = f"s{rng.randrange(6)}", f"p{rng.randrange(3)}", f"o{rng.randrange(3)}"
        facts.add(Fact(*(s, p, o)[: rng.choice((1, 2, 3, 3))]))
    return FactTable(sorted(facts, key=str))


@pytest.mark.parametrize("seed", range(5))
def test_per_batch_exclusion_equals_the_f_by_f_rule(seed):
    table = random_table(seed, 40)
    rng = np.random.default_rng(seed)
    facts = sorted(rng.choice(len(table), 30, replace=False).tolist(), key=lambda _: rng.random())  # any order
    dense = slow_exclude(table, facts)
    assert dense.any()  # the table has wildcard pairs to exclude
    rule = Wildcards(table, facts)
    assert torch.equal(rule[torch.arange(len(facts))], dense)
    targets = torch.as_tensor(rng.integers(0, len(facts), 17))
    assert torch.equal(rule[targets], dense[targets])
    assert torch.equal(rule[targets[3]], dense[targets[3]])
    cand = torch.as_tensor(np.sort(rng.choice(len(facts), 11, replace=False)))
    assert torch.equal(rule.exclude(targets, cand), dense[targets][:, cand])


def test_sample_facts_holds_the_batch_and_k_others():
    gen = step_generator(0, 1, 5)
    batch = torch.tensor([7, 3, 7, 40])
    facts = sample_facts(batch, 100, 10, gen)
    assert len(facts) == 13 and torch.equal(facts, facts.sort().values) and len(facts.unique()) == 13
    assert set(batch.tolist()) <= set(facts.tolist())
    again = sample_facts(batch, 100, 10, step_generator(0, 1, 5))
    assert torch.equal(facts, again)  # a pure function of (seed, task, step)
    assert not torch.equal(facts, sample_facts(batch, 100, 10, step_generator(0, 1, 6)))
    assert torch.equal(sample_facts(batch, 100, 500, gen), torch.arange(100))  # K covers the stage


def test_config_checks_the_options(tiny_config):
    assert load_config(tiny_config).loss.negatives == "auto"
    with pytest.raises(UserError, match="loss.negatives"):
        load_config(tiny_config, {"loss.negatives": "some"})
    with pytest.raises(UserError, match="loss.num_negatives"):
        load_config(tiny_config, {"loss.num_negatives": 0})


@pytest.fixture(scope="module")
def cfg_path(tmp_path_factory, tiny_config):
    return config_file(tmp_path_factory.mktemp("cfg") / "neg.yaml", tiny_config, epochs=2, batch_size=8,
                       checkpoint_every=2)


SAMPLED = {"method.name": "mas", "loss.negatives": "sampled", "loss.num_negatives": 3}


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory, tiny_world, cfg_path):
    out = tmp_path_factory.mktemp("sampled") / "run"
    train(tiny_world, load_config(cfg_path, SAMPLED), out, device="cpu")
    return out


def test_all_trains_as_the_f_by_f_matrix_did(monkeypatch, tmp_path, tiny_world, cfg_path):
    """The default with the per-batch rule against the old dense (F_t, F_t) matrix, bit for bit
    (EWC also takes the labels through TaskData.labeled)."""
    new_labels = Session.labels

    def dense_labels(self, facts, rows):
        targets, _ = new_labels(self, facts, rows)
        return targets, slow_exclude(self.dataset.facts, facts)

    for method in ("mas", "ewc"):
        cfg = load_config(cfg_path, {"method.name": method})
        train(tiny_world, cfg, tmp_path / f"new-{method}", device="cpu")
        monkeypatch.setattr(Session, "labels", dense_labels)
        train(tiny_world, cfg, tmp_path / f"old-{method}", device="cpu")
        monkeypatch.undo()
        assert_same_run(tmp_path / f"old-{method}", tmp_path / f"new-{method}")


def test_sampled_embeds_only_the_batch_facts_and_k_others(monkeypatch, tmp_path_factory, tiny_config):
    """A world of 40 facts (20 per task), batch 4, K = 3: each step embeds its batch's facts and 3 more."""
    from factlearn.data.synth import generate_world

    world = tmp_path_factory.mktemp("world40") / "w"
    generate_world(world, seed=5, facts=40, images_per_fact=3, size=32, workers=1)
    cfg = load_config(config_file(tmp_path_factory.mktemp("cfg40") / "c.yaml", tiny_config, epochs=1, batch_size=4),
                      SAMPLED)
    embedded, original = [], FactModel.embed_facts

    def record(self, tokens, mask):
        embedded.append(len(tokens))
        return original(self, tokens, mask)

    steps: list[int] = []
    real_step = factlearn.training.task.train_step

    def step(model, method, opt, forward, batch, *args, **kwargs):
        n = len(embedded)
        out = real_step(model, method, opt, forward, batch, *args, **kwargs)
        assert embedded[n] == len(batch.fact_tokens)  # the step's forward embeds the step's facts, no more
        assert len(batch.fact_tokens) == len(batch.targets.unique()) + 3
        assert batch.exclude.shape == (len(batch.x), len(batch.fact_tokens))
        steps.append(len(batch.fact_tokens))
        return out

    monkeypatch.setattr(FactModel, "embed_facts", record)
    monkeypatch.setattr(factlearn.training.task, "train_step", step)
    train(world, cfg, tmp_path_factory.mktemp("run40") / "run", device="cpu")
    assert steps and max(steps) <= 4 + 3 < 20


def test_sampled_with_k_covering_the_stage_equals_all(tmp_path, tiny_world, cfg_path):
    train(tiny_world, load_config(cfg_path, {"method.name": "mas"}), tmp_path / "all", device="cpu")
    train(tiny_world, load_config(cfg_path, {**SAMPLED, "loss.num_negatives": 1000}), tmp_path / "sampled",
          device="cpu")
    assert_same_run(tmp_path / "all", tmp_path / "sampled")


@pytest.mark.parametrize("n", [1, 3])  # after the partial checkpoint at step 2 of B1 / step 2 of B2
def test_sampled_resumes_bit_identically(monkeypatch, tmp_path, tiny_world, cfg_path, sampled_run, n):
    cfg = load_config(cfg_path, SAMPLED)
    crash_on_call(monkeypatch, factlearn.run.RunDir, "save_partial", n, after=True)
    with pytest.raises(Crash):
        train(tiny_world, cfg, tmp_path / "run", device="cpu")
    monkeypatch.undo()
    train(tiny_world, cfg, tmp_path / "run", device="cpu", resume=True)
    assert_same_run(sampled_run, tmp_path / "run")


def test_auto_samples_only_above_the_measured_crossover():
    from factlearn.config import SAMPLED_ABOVE, LossConfig

    assert LossConfig().negatives == "auto"
    assert LossConfig().negatives_for(SAMPLED_ABOVE) == "all"
    assert LossConfig().negatives_for(SAMPLED_ABOVE + 1) == "sampled"
    for kind in ("all", "sampled"):  # an explicit choice holds at any size
        assert {LossConfig(negatives=kind).negatives_for(n) for n in (10, 10 * SAMPLED_ABOVE)} == {kind}


def test_a_run_saved_with_all_compares_equal_to_auto_where_they_train_alike(tiny_config):
    from factlearn.config import SAMPLED_ABOVE
    from factlearn.training.state import comparable_config

    saved, here = load_config(tiny_config, {"loss.negatives": "all"}), load_config(tiny_config)
    assert comparable_config(saved, 186) == comparable_config(here, 186)  # --resume of an older run goes on
    assert comparable_config(saved, SAMPLED_ABOVE + 1) != comparable_config(here, SAMPLED_ABOVE + 1)
    sampled = load_config(tiny_config, {"loss.negatives": "sampled"})
    assert comparable_config(sampled, 186) != comparable_config(here, 186)
