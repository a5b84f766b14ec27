"""model.pt round trip (weights_only loading) and clear errors for files that do not fit."""

import pytest
import torch

from dcpnas.binary import BinaryConv2d, set_binary_weights
from dcpnas.checkpoint import SCHEMA, load_model, load_torch, model_record, save_model, save_torch
from dcpnas.errors import ArtifactError
from dcpnas.genotype import DDPNAS_MCN_2, Genotype
from dcpnas.model import Network
from dcpnas.space import SearchSpace

SPACE = SearchSpace(cells=3, channels=4, input_shape=(1, 8, 8), num_classes=5, policy="authors")
NORM = {"mean": [0.25], "std": [0.5]}
OTHER = Genotype(DDPNAS_MCN_2.reduce, (2, 3, 4, 5), DDPNAS_MCN_2.normal, (2, 3, 4, 5))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _trained_like(binary=True):
    torch.manual_seed(0)
    net = Network(DDPNAS_MCN_2, SPACE, binary=binary)
    with torch.no_grad():  # move every parameter and BN statistic away from its initial value
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for name, b in net.named_buffers():
            if "running" in name:
                b.add_(0.2 * torch.rand_like(b))
    return net.eval()


@pytest.mark.parametrize("binary", [True, False])
def test_round_trip(tmp_path, binary):
    net = _trained_like(binary)
    path = save_model(tmp_path / "model.pt", net, NORM, {"test_accuracy": 0.5})
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["schema"] == SCHEMA and raw["binary"] == binary and raw["space"]["policy"] == "authors"
    back, meta = load_model(path, genotype=DDPNAS_MCN_2)
    assert not back.training
    assert meta["genotype"] == DDPNAS_MCN_2 and meta["space"] == SPACE
    assert meta["normalization"] == NORM and meta["binary"] == binary and meta["info"]["test_accuracy"] == 0.5
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x), back(x))
    for (k, a), (k2, b) in zip(net.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_stage1_network_round_trip(tmp_path):
    net = _trained_like()
    set_binary_weights(net, False)
    path = save_model(tmp_path / "m.pt", net, NORM)
    back, meta = load_model(path)
    assert meta["binary_weight"] is False
    assert all(not m.binary_weight for m in back.modules() if isinstance(m, BinaryConv2d))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x), back(x))


def test_wrong_genotype(tmp_path):
    path = save_model(tmp_path / "model.pt", _trained_like(), NORM)
    with pytest.raises(ArtifactError, match=r"model\.pt: weights belong to genotype [0-9a-f]+, not to the given"):
        load_model(path, genotype=OTHER)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(ArtifactError, match="file not found"):
        load_model(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ArtifactError, match=r"bad\.pt: not a readable PyTorch checkpoint") as e:
        load_model(bad)
    assert "\n" not in str(e.value)
    save_torch(tmp_path / "list.pt", [1, 2])
    with pytest.raises(ArtifactError, match="expected a dict"):
        load_torch(tmp_path / "list.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"schema": SCHEMA, "x": _Evil()}, p)
    with pytest.raises(ArtifactError, match="not a readable PyTorch checkpoint") as e:
        load_model(p)
    assert "could run code" in str(e.value) and "weights_only" not in str(e.value)  # no advice to load it unsafely


@pytest.mark.parametrize("mutate, needle", [
    (lambda r: r.__setitem__("schema", "dcpnas.model/0"), "expected schema"),
    (lambda r: r.pop("state_dict"), "missing field(s) state_dict"),
    (lambda r: r["genotype"]["normal"].__setitem__(0, ["conv_9x9", 0]), "unknown op 'conv_9x9'"),
    (lambda r: r["space"].__setitem__("channels", 6), "weights do not fit"),
    (lambda r: r["space"].__setitem__("policy", "mine"), "cannot rebuild the network"),
    (lambda r: r["space"].pop("cells"), "cannot rebuild the network"),
    (lambda r: r["state_dict"].pop("classifier.linear.bias"), "weights do not fit"),
    (lambda r: r.__setitem__("normalization", {"mean": [0.1, 0.2], "std": [1.0]}), "normalization must hold 1"),
    (lambda r: r.__setitem__("normalization", {"mean": [float("nan")], "std": [1.0]}), "1 finite mean"),
    (lambda r: r.__setitem__("normalization", {"mean": [0.1], "std": [0.0]}), "finite std > 0"),
    (lambda r: r.__setitem__("normalization", {"mean": ["x"], "std": [1.0]}), "normalization must hold 1"),
    (lambda r: r.__setitem__("normalization", {"mean": 5, "std": [1.0]}), "normalization must hold 1"),
    (lambda r: r.__setitem__("info", [1, 2]), "info must be a dict"),
    (lambda r: r.__setitem__("space", "big"), "cannot rebuild the network"),
    (lambda r: r["state_dict"]["classifier.linear.weight"].__setitem__((0, 0), float("inf")), "hold NaN or inf"),
])
def test_malformed_records(tmp_path, mutate, needle):
    rec = model_record(_trained_like(), NORM)
    mutate(rec)
    save_torch(tmp_path / "m.pt", rec)
    with pytest.raises(ArtifactError) as e:
        load_model(tmp_path / "m.pt")
    assert needle in str(e.value) and str(tmp_path / "m.pt") in str(e.value)
