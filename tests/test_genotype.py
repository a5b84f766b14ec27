"""Genotype: JSON and DARTS-string round trips, validation errors, derivation from alphas."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dcpnas.errors import GenotypeError
from dcpnas.genotype import DDPNAS_MCN_2, SCHEMA, Genotype, load_genotype
from dcpnas.space import PRIMITIVES, edge_index

DARTS_V2 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
    "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
    "('max_pool_3x3', 1)], reduce_concat=range(2, 6))"
)


def _single_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def test_json_round_trip(tmp_path):
    g = Genotype(DDPNAS_MCN_2.normal, DDPNAS_MCN_2.normal_concat, DDPNAS_MCN_2.reduce,
                 DDPNAS_MCN_2.reduce_concat, search={"seed": 3, "val_accuracy": 0.5})
    back = Genotype.from_json(g.to_json())
    assert back == g and back.search == g.search
    path = g.save(tmp_path / "genotype.json")
    assert json.loads(path.read_text())["schema"] == SCHEMA
    assert load_genotype(path) == g
    assert load_genotype(path).digest() == g.digest()


def test_digest_ignores_search_record():
    g = Genotype(DDPNAS_MCN_2.normal, (2, 3, 4, 5), DDPNAS_MCN_2.reduce, (2, 3, 4, 5), search={"x": 1})
    assert g.digest() == DDPNAS_MCN_2.digest()
    other = Genotype(DDPNAS_MCN_2.reduce, (2, 3, 4, 5), DDPNAS_MCN_2.normal, (2, 3, 4, 5))
    assert other.digest() != DDPNAS_MCN_2.digest()


def test_darts_string_with_range_and_lists(tmp_path):
    g = Genotype.from_darts(DARTS_V2)
    assert g.normal[7] == ("dil_conv_3x3", 2)
    assert g.reduce_concat == (2, 3, 4, 5) and g.normal_concat == (2, 3, 4, 5)
    assert Genotype.from_darts(g.to_darts()) == g
    assert Genotype.from_darts(DDPNAS_MCN_2.to_darts()) == DDPNAS_MCN_2
    f = tmp_path / "g.txt"
    f.write_text(DARTS_V2 + "\n")
    assert load_genotype(f) == g


@pytest.mark.parametrize("evil", [
    "__import__('os').system('touch /tmp/dcpnas_pwned')",
    "Genotype(normal=__import__('os').system('x'), normal_concat=[2], reduce=[], reduce_concat=[2])",
    "Genotype(normal=[('sep_conv_3x3', 0)] * 8, normal_concat=[2, 3, 4, 5], reduce=[], reduce_concat=[2])",
    "Genotype(normal=[(open('x'), 0)], normal_concat=[2, 3, 4, 5], reduce=[], reduce_concat=[2])",
    "Genotype(normal=list(range(8)), normal_concat=[2, 3, 4, 5], reduce=[], reduce_concat=[2])",
    "os.system('x')",
    "lambda: 0",
])
def test_darts_string_never_evaluated(evil, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GenotypeError) as e:
        Genotype.from_darts(evil)
    _single_line(e)
    assert not (tmp_path / "x").exists()


def _edges(normal=None, reduce=None):
    d = DDPNAS_MCN_2.to_dict()
    if normal is not None:
        d["normal"] = normal
    if reduce is not None:
        d["reduce"] = reduce
    return d


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d["normal"].__setitem__(0, ["conv_7x7", 1]), "unknown op 'conv_7x7'"),
    (lambda d: d["normal"].__setitem__(0, ["none", 1]), "unknown op 'none'"),
    (lambda d: d["normal"].__setitem__(2, ["sep_conv_3x3", 3]), "input node 3 is out of range for node 3"),
    (lambda d: d["reduce"].__setitem__(0, ["sep_conv_3x3", -1]), "input node -1"),
    (lambda d: d["normal"].pop(), "normal cell has 7 edges, expected 2 per node"),
    (lambda d: d["reduce"].append(["sep_conv_3x3", 0]), "reduce cell has 9 edges"),
    (lambda d: d.pop("reduce_concat"), "missing field 'reduce_concat'"),
    (lambda d: d.pop("normal"), "missing field 'normal'"),
    (lambda d: d.__setitem__("schema", "dcpnas.genotype/0"), "expected schema"),
    (lambda d: d.pop("schema"), "expected schema"),
    (lambda d: d.__setitem__("normal_concat", [2, 3, 9]), "normal_concat [2, 3, 9]"),
    (lambda d: d.__setitem__("normal_concat", [2, 2, 3]), "distinct"),
    (lambda d: d["normal"].__setitem__(1, ["sep_conv_3x3", "0"]), "integer node"),
    (lambda d: d["normal"].__setitem__(1, ["sep_conv_3x3", True]), "integer node"),
    (lambda d: d["normal"].__setitem__(1, ["sep_conv_3x3"]), "pair"),
])
def test_bad_genotype_json(mutate, needle):
    d = _edges()
    mutate(d)
    with pytest.raises(GenotypeError) as e:
        Genotype.from_json(json.dumps(d), source="g.json")
    msg = _single_line(e)
    assert needle in msg and msg.startswith("g.json")


@pytest.mark.parametrize("text, needle", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('"x"', "expected a JSON object"),
])
def test_bad_json_text(text, needle):
    with pytest.raises(GenotypeError) as e:
        Genotype.from_json(text)
    assert needle in _single_line(e)


def test_bad_darts_strings():
    with pytest.raises(GenotypeError, match="missing field"):
        Genotype.from_darts("Genotype(normal=[], normal_concat=[2])")
    with pytest.raises(GenotypeError, match="keyword"):
        Genotype.from_darts("Genotype([], [2], [], [2])")
    with pytest.raises(GenotypeError, match="not a DARTS"):
        Genotype.from_darts("Genotype(normal=[")
    with pytest.raises(GenotypeError, match="reduce cell has 0 edges, expected 2"):
        Genotype.from_darts("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=range(2, 6),"
                            " reduce=[], reduce_concat=range(2, 6))")


def test_load_genotype_missing_and_binary(tmp_path):
    with pytest.raises(GenotypeError, match="file not found"):
        load_genotype(tmp_path / "nope.json")
    f = tmp_path / "bin.json"
    f.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(GenotypeError, match="not a text file"):
        load_genotype(f)


def test_from_alphas_picks_strongest_edges():
    """Constructed alphas: node j's two strongest incoming edges (excluding `none`) must be chosen."""
    rows = edge_index()
    a = np.zeros((len(rows), len(PRIMITIVES)))
    none = PRIMITIVES.index("none")
    want = {2: {(0, "sep_conv_3x3"), (1, "dil_conv_5x5")},
            3: {(2, "max_pool_3x3"), (0, "skip_connect")},
            4: {(3, "sep_conv_5x5"), (1, "avg_pool_3x3")},
            5: {(4, "dil_conv_3x3"), (2, "sep_conv_3x3")}}
    for r, (i, j) in enumerate(rows):
        a[r, none] = 10.0  # `none` strongest everywhere: must be ignored
        for src, op in want[j]:
            if src == i:
                a[r, PRIMITIVES.index(op)] = 5.0 - 0.1 * i
        a[r, PRIMITIVES.index("avg_pool_3x3") if (i, "avg_pool_3x3") not in want[j] else 0] += 0.5
    g = Genotype.from_alphas(a, torch.tensor(a))
    for j in range(4):
        pairs = {(i, op) for op, i in g.normal[2 * j:2 * j + 2]}
        assert pairs == want[j + 2]
    assert g.reduce == g.normal
    # input order within a node is by input index
    assert [i for _, i in g.normal] == [0, 1, 0, 2, 1, 3, 2, 4]


def test_from_alphas_bad_shape():
    with pytest.raises(GenotypeError, match="shape"):
        Genotype.from_alphas(np.zeros((13, 8)), np.zeros((14, 8)))


# -- formats from the field (as published; parsed, never run) -----------------------------------------------

# the authors' genotypes.py as they write it: imports, the namedtuple, then NAME = Genotype(...) entries
AUTHORS_FILE = ("from collections import namedtuple\n"
                "Genotype = namedtuple('Genotype', 'normal normal_concat reduce reduce_concat')\n\n"
                + (Path(__file__).parent / "data" / "published" / "ddpnas_mcn_2.py").read_text().split("\n", 1)[1])

GDAS_V1 = """Genotype(
  normal=[
    (('skip_connect', 0), ('skip_connect', 1)),
    (('skip_connect', 0), ('sep_conv_5x5', 2)),
    (('sep_conv_3x3', 3), ('skip_connect', 0)),
    (('sep_conv_5x5', 4), ('sep_conv_3x3', 3))],
  normal_concat=[2, 3, 4, 5],
  reduce=[
    (('sep_conv_5x5', 0), ('sep_conv_3x3', 1)),  # step 1
    (('sep_conv_5x5', 2), ('sep_conv_5x5', 1)),
    (('dil_conv_5x5', 2), ('sep_conv_3x3', 1)),
    (('sep_conv_5x5', 0), ('sep_conv_5x5', 1))],
  reduce_concat=[2, 3, 4, 5],
  connectN=None, connects=None
)"""


def test_published_formats(tmp_path):
    f = tmp_path / "genotypes.py"
    f.write_text(AUTHORS_FILE)
    assert load_genotype(f) == DDPNAS_MCN_2  # one genotype in the file: taken
    f.write_text(AUTHORS_FILE + "\nOTHER = " + AUTHORS_FILE.split("DDPNAS_MCN_2 = ")[1])
    with pytest.raises(GenotypeError, match=r"holds 2 genotypes \(DDPNAS_MCN_2, OTHER\); pick one"):
        load_genotype(f)
    assert load_genotype(f"{f}:DDPNAS_MCN_2") == DDPNAS_MCN_2
    with pytest.raises(GenotypeError, match="no genotype named 'NOPE'"):
        load_genotype(f"{f}:NOPE")
    g = Genotype.from_darts(GDAS_V1)
    assert g.normal[:3] == (("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0))
    assert g.reduce[4] == ("dil_conv_5x5", 2)


@pytest.mark.parametrize("text, needle", [
    (GDAS_V1.replace("('sep_conv_3x3', 3), ('skip_connect', 0)", "('sep_conv_3x3', 3), ('conv_3x1_1x3', 0)"),
     "unknown op 'conv_3x1_1x3'"),  # SETN's op, outside the space
    (GDAS_V1.replace("connectN=None", "connectN=[1]"), "connectN must be None"),
    (GDAS_V1.replace("connects=None", "connects=None, drop_prob=0.2"), "unknown field(s) drop_prob"),
    (GDAS_V1.replace("connects=None", "connects=None, **extra"), "unknown field(s) None"),
    (GDAS_V1.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=range(10**12)"), "unsupported expression"),
    (GDAS_V1.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=range(1000000000000)"), "at most 64"),
    (GDAS_V1.replace("(('skip_connect', 0), ('skip_connect', 1)),", "(('skip_connect', 0),),"), "node 2 has 1 input"),
    (GDAS_V1.replace("normal=[", "normal=None and [", 1), "unsupported expression"),
    (GDAS_V1.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=None"), "normal_concat must be a list"),
    ("Genotype(normal=" + "[" * 5000 + "]" * 5000 + ")", "nested"),
])
def test_published_format_errors(text, needle):
    with pytest.raises(GenotypeError) as e:
        Genotype.from_darts(text, source="g.txt")
    msg = _single_line(e)
    assert needle in msg, msg


@pytest.mark.parametrize("text, needle", [
    ("", "empty file"),
    ("Genotype(normal=[])", "not valid JSON"),  # a .json file is JSON, whatever it holds
    ('{"schema": "dcpnas.genotype/1", "normal": null, "normal_concat": [2], "reduce": [], "reduce_concat": [2]}',
     "normal must be a list of (op, input node) pairs, found null"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
])
def test_json_file_errors(tmp_path, text, needle):
    f = tmp_path / "genotype.json"
    f.write_text(text)
    with pytest.raises(GenotypeError) as e:
        load_genotype(f)
    assert needle in _single_line(e)


def test_five_published_genotypes_read_as_published():
    folder = Path(__file__).parent / "data" / "published"
    found = {p.name: load_genotype(p) for p in sorted(folder.iterdir())}
    assert len(found) == 5 and found["ddpnas_mcn_2.py"] == DDPNAS_MCN_2
    assert found["gdas_v1.txt"].normal[3] == ("sep_conv_5x5", 2)
    assert all(g.normal_concat == (2, 3, 4, 5) for g in found.values())


def test_a_genotype_of_two_nodes_per_cell_builds_its_evaluation_network(tmp_path):
    """A search with `steps = 2` finds 4-edge cells: the genotype infers its node count, train/compile build
    the evaluation network with it, and an odd edge count or cells of different sizes are refused."""
    from dcpnas.model import Network
    from dcpnas.train import default_eval_space

    g = Genotype(normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("sep_conv_3x3", 2)],
                 normal_concat=[2, 3], reduce=[("max_pool_3x3", 0), ("skip_connect", 1), ("skip_connect", 2),
                                               ("avg_pool_3x3", 0)], reduce_concat=[2, 3])
    assert g.steps == 2 and g.validate() is g
    g.save(tmp_path / "g.json")
    assert load_genotype(tmp_path / "g.json") == g
    net = Network(g, default_eval_space(cells=3, channels=4, steps=g.steps), binary=True).eval()
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(GenotypeError, match="expected 8"):
        g.validate(steps=4)
    with pytest.raises(GenotypeError, match="2 per node"):
        Genotype(normal=g.normal[:3], normal_concat=[2], reduce=g.reduce[:3], reduce_concat=[2]).validate()
    with pytest.raises(GenotypeError, match="reduce cell has 2 edges"):
        Genotype(normal=g.normal, normal_concat=[2, 3], reduce=g.reduce[:2], reduce_concat=[2]).validate()
