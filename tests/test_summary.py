"""Summary table: parameter bits per layer, memory, and LUT latency per layer."""

import pytest

from dcpnas.binary import set_binary_weights
from dcpnas.errors import LutError
from dcpnas.genotype import DDPNAS_MCN_2
from dcpnas.latency import genotype_latency
from dcpnas.model import Network
from dcpnas.space import SearchSpace
from dcpnas.summary import count_bits, summarize

SPACE = SearchSpace(cells=3, channels=4, input_shape=(1, 8, 8), num_classes=10)


class FakeTable:
    """ms = a deterministic function of the key; keys in `drop` are missing."""

    def __init__(self, drop=()):
        self.drop = set(drop)

    def query(self, key):
        if key in self.drop:
            raise LutError(f"no entry {key!r}")
        return 0.001 * (sum(map(ord, key)) % 97 + 1)


def test_sep_conv_counted_by_hand():
    net = Network(DDPNAS_MCN_2, SPACE, binary=True)
    s = summarize(net)
    row = next(r for r in s.rows if r.name == "cells.0.ops.4")
    assert row.op == "sep_conv_3x3" and row.key == "sep_conv_3x3|4|4|8|8|1" and row.binary
    # two blocks, each: depthwise 4x1x3x3 + pointwise 4x4x1x1 binary weights;
    # 32-bit: per conv unit beta (4) + BN in (2*C_in) + BN out (2*4) + PReLU (4)
    assert row.params_1bit == 2 * (36 + 16)
    assert row.params_32bit == 2 * ((4 + 8 + 8 + 4) + (4 + 8 + 8 + 4))
    assert row.bits == row.params_1bit + 32 * row.params_32bit
    assert row.memory_kib == pytest.approx(row.bits / 8192)
    pool = next(r for r in s.rows if r.op == "max_pool_3x3")
    assert pool.params_1bit == pool.params_32bit == 0 and not pool.binary
    stem = s.rows[0]
    assert stem.name == "stem" and not stem.binary and stem.params_32bit == 12 * 9 + 2 * 12
    assert s.rows[-1].name == "classifier" and s.rows[-1].params_32bit == 16 * 4 * 10 + 10


def test_totals_cover_the_whole_network():
    net = Network(DDPNAS_MCN_2, SPACE, binary=True)
    s = summarize(net)
    assert len(s.rows) == 1 + 3 * (2 + 8) + 1
    n_all = sum(p.numel() for p in net.parameters())
    n_binary = sum(m.weight.numel() for m in net.modules() if type(m).__name__ == "BinaryConv2d")
    assert s.params_1bit == n_binary and s.params_1bit + s.params_32bit == n_all
    assert (s.params_1bit, s.params_32bit) == count_bits(net)
    assert s.float_memory_kib == pytest.approx(n_all * 4 / 1024)
    assert s.compression == pytest.approx(n_all * 32 / s.bits) and s.compression > 1
    assert s.latency_ms is None and all(r.latency_ms is None for r in s.rows)
    d = s.to_dict()
    assert d["schema"] == "dcpnas.summary/1" and len(d["rows"]) == len(s.rows)


def test_float_and_stage1_networks_are_all_32_bit():
    for net in (Network(DDPNAS_MCN_2, SPACE, binary=False), Network(DDPNAS_MCN_2, SPACE, binary=True)):
        set_binary_weights(net, False)
        s = summarize(net, FakeTable())
        assert s.params_1bit == 0 and not any(r.binary for r in s.rows)
    assert summarize(Network(DDPNAS_MCN_2, SPACE, binary=False), FakeTable()).latency_ms is None


def test_latency_column_matches_genotype_latency():
    net = Network(DDPNAS_MCN_2, SPACE, binary=True)
    table = FakeTable()
    s = summarize(net, table)
    assert all(r.latency_ms == table.query(r.key) for r in s.rows)
    assert s.latency_ms == pytest.approx(genotype_latency(DDPNAS_MCN_2, SPACE, table))
    assert not s.missing_keys


def test_missing_lut_entries_are_listed_not_fatal():
    net = Network(DDPNAS_MCN_2, SPACE, binary=True)
    full = summarize(net, FakeTable())
    drop = {full.rows[3].key, full.rows[-1].key}
    s = summarize(net, FakeTable(drop))
    assert set(s.missing_keys) == drop
    assert s.rows[-1].latency_ms is None
    expected = sum(r.latency_ms for r in full.rows if r.key not in drop)
    assert s.latency_ms == pytest.approx(expected)


def test_authors_policy_keys():
    space = SearchSpace(cells=3, channels=4, input_shape=(1, 8, 8), num_classes=10, policy="authors")
    s = summarize(Network(DDPNAS_MCN_2, space, binary=True))
    assert s.rows[1].key.startswith("pre_conv1x1:authors|")
    assert any(r.key.startswith("sep_conv_5x5:authors|") for r in s.rows)
    assert any(r.key.startswith("pre_reduce:authors|") for r in s.rows)
