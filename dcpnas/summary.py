"""A larq-style summary of an evaluation network: one row per latency position (stem, each cell's two
preprocessing convs and eight edge ops, classifier) with its 1-bit and 32-bit parameters, the bits and
memory they take, and, given a latency table, the LUT latency of that op.

Parameters are the trainable tensors (BN running statistics are buffers and not counted; at deployment
BN folds into the scale and bias). A weight counts 1 bit when it belongs to a BinaryConv2d that
binarises its weights; everything else (beta, BN, PReLU, stem, classifier) counts 32 bits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from dcpnas.binary import BinaryConv2d
from dcpnas.errors import ConfigError, LutError
from dcpnas.latency import edge_keys, fixed_keys
from dcpnas.model import Network
from dcpnas.space import edge_index

SCHEMA = "dcpnas.summary/1"


@dataclass
class SummaryRow:
    """name: module path (as in the state dict); op: DARTS op or pseudo-op; key: the LUT OpKey;
    memory_kib = bits / 8 / 1024; latency_ms: None when no table was given or the key is not in it."""

    name: str
    op: str
    key: str
    binary: bool
    params_1bit: int
    params_32bit: int
    bits: int
    memory_kib: float
    latency_ms: float | None = None


@dataclass
class Summary:
    rows: list[SummaryRow]
    params_1bit: int
    params_32bit: int
    bits: int
    memory_kib: float
    float_memory_kib: float  # the same parameters all at 32 bits
    latency_ms: float | None = None  # sum over rows found in the table (None without a table)
    missing_keys: list[str] = field(default_factory=list)

    @property
    def compression(self) -> float:
        """Memory of the all-32-bit network / memory of this one."""
        return self.float_memory_kib / self.memory_kib if self.memory_kib else 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["schema"] = SCHEMA
        d["compression"] = self.compression
        return d


def count_bits(module: nn.Module) -> tuple[int, int]:
    """(1-bit parameter count, 32-bit parameter count) of `module`'s trainable parameters."""
    one_bit = {id(m.weight) for m in module.modules() if isinstance(m, BinaryConv2d) and m.binary_weight}
    n1 = n32 = 0
    for p in module.parameters():
        if id(p) in one_bit:
            n1 += p.numel()
        else:
            n32 += p.numel()
    return n1, n32


def _row(name: str, op: str, key: str, module: nn.Module, table) -> tuple[SummaryRow, bool]:
    n1, n32 = count_bits(module)
    bits = n1 + 32 * n32
    lat, missing = None, False
    if table is not None:
        try:
            lat = float(table.query(key))
        except LutError:
            missing = True
    return SummaryRow(name, op, key, n1 > 0, n1, n32, bits, bits / 8 / 1024, lat), missing


def summarize(model: Network, table=None) -> Summary:
    """Summary of `model`. table: anything with .query(OpKey) -> ms (raising LutError for a key it lacks),
    e.g. a target's latency table; None skips the latency column. A float network (binary=False) has no
    LUT entries (the LUT holds the 1-bit ops), so its latency is left out."""
    space = model.space
    if not model.binary:
        table = None
    fixed = fixed_keys(space)
    cell_keys = edge_keys(space)
    position = {e: k for k, e in enumerate(edge_index(space.steps))}
    rows, missing = [], []

    def add(name, op, key, module):
        row, miss = _row(name, op, key, module, table)
        rows.append(row)
        if miss:
            missing.append(key)

    add("stem", "stem", fixed[0], model.stem)
    for c, cell in enumerate(model.cells):
        pre0_op = "pre_reduce" if fixed[1 + 2 * c].startswith("pre_reduce") else "pre_conv1x1"
        add(f"cells.{c}.pre0", pre0_op, fixed[1 + 2 * c], cell.pre0)
        add(f"cells.{c}.pre1", "pre_conv1x1", fixed[2 + 2 * c], cell.pre1)
        edges = model.genotype.reduce if cell.reduction else model.genotype.normal
        for k, (op, i) in enumerate(edges):
            key = cell_keys[c][position[(i, k // 2 + 2)]][space.primitives.index(op)]
            add(f"cells.{c}.ops.{k}", op, key, cell.ops[k])
    add("classifier", "classifier", fixed[-1], model.classifier)

    n1 = sum(r.params_1bit for r in rows)
    n32 = sum(r.params_32bit for r in rows)
    bits = n1 + 32 * n32
    if n1 + n32 != sum(p.numel() for p in model.parameters()):  # a module outside stem/cells/classifier
        raise ConfigError(f"the network has parameters outside stem, cells and classifier: the summary covers "
                          f"{n1 + n32} of {sum(p.numel() for p in model.parameters())}")
    latency = None if table is None else sum(r.latency_ms for r in rows if r.latency_ms is not None)
    return Summary(rows, n1, n32, bits, bits / 8 / 1024, (n1 + n32) * 32 / 8 / 1024, latency, missing)


__all__ = ["Summary", "SummaryRow", "summarize", "count_bits", "SCHEMA"]
