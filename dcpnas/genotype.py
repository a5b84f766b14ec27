"""Genotype: the discrete architecture a search returns (DARTS cells), as plain data.

JSON schema `dcpnas.genotype/1` (DESIGN.md). Also parses the DARTS `Genotype(normal=[...], ...)`
strings that papers print, without eval.
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcpnas.errors import GenotypeError
from dcpnas.io import parse_json, to_json, write_json
from dcpnas.space import PRIMITIVES, STEPS, edge_index

SCHEMA = "dcpnas.genotype/1"
Edge = tuple[str, int]


@dataclass(frozen=True)
class Genotype:
    """normal/reduce: 2 * steps (op, input node) pairs, node j's two inputs at 2j, 2j+1
    (nodes 0, 1 are the cell inputs, 2.. the intermediate nodes). concat: nodes concatenated."""

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]
    search: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for name in ("normal", "reduce"):
            object.__setattr__(self, name, tuple((str(op), int(i)) for op, i in getattr(self, name)))
        for name in ("normal_concat", "reduce_concat"):
            object.__setattr__(self, name, tuple(int(i) for i in getattr(self, name)))

    # -- validation -----------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        """Intermediate nodes per cell (2 edges each): 4 in DARTS; a search with the `steps` key finds others."""
        return len(self.normal) // 2

    def validate(self, primitives: tuple[str, ...] = PRIMITIVES, steps: int | None = None) -> "Genotype":
        """Raise GenotypeError naming the first problem; return self when valid. steps: the nodes per cell
        expected (None: as many as the normal cell has, at least one, the same in the reduction cell)."""
        if steps is None:
            if len(self.normal) < 2 or len(self.normal) % 2:
                raise GenotypeError(f"normal cell has {len(self.normal)} edges, expected 2 per node (at least one node)")
            steps = self.steps
        for cell in ("normal", "reduce"):
            if len(getattr(self, cell)) != 2 * steps:
                raise GenotypeError(f"{cell} cell has {len(getattr(self, cell))} edges, expected {2 * steps} "
                                    f"(2 per node, {steps} node{'s' * (steps > 1)})")
        for cell in ("normal", "reduce"):
            edges = getattr(self, cell)
            for k, (op, inp) in enumerate(edges):
                node = k // 2 + 2
                if op not in primitives or op == "none":
                    allowed = ", ".join(p for p in primitives if p != "none")
                    raise GenotypeError(f"{cell} edge {k}: unknown op {op!r}; allowed: {allowed}")
                if not 0 <= inp < node:
                    raise GenotypeError(
                        f"{cell} edge {k}: input node {inp} is out of range for node {node} (must be 0..{node - 1})"
                    )
            concat = getattr(self, f"{cell}_concat")
            if not concat or any(not 2 <= c < steps + 2 for c in concat) or len(set(concat)) != len(concat):
                raise GenotypeError(f"{cell}_concat {list(concat)} must be distinct nodes in 2..{steps + 1} "
                                    f"(cells of {steps} node{'s' * (steps > 1)})")
        return self

    # -- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {
            "schema": SCHEMA,
            "normal": [[op, i] for op, i in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, i] for op, i in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }
        if self.search:
            d["search"] = self.search
        return d

    def to_json(self) -> str:
        return to_json(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict, source: str = "genotype") -> "Genotype":
        if not isinstance(d, dict):
            raise GenotypeError(f"{source}: expected a JSON object")
        if d.get("schema") != SCHEMA:
            raise GenotypeError(f"{source}: expected schema {SCHEMA!r}, found {d.get('schema')!r}")
        missing = [k for k in ("normal", "normal_concat", "reduce", "reduce_concat") if k not in d]
        if missing:
            raise GenotypeError(f"{source}: missing field {missing[0]!r}")
        return cls._checked(d, source, search=d.get("search", {}))

    @classmethod
    def _checked(cls, fields: dict, source: str, search=None) -> "Genotype":
        """Build from parsed fields and validate; every problem becomes one GenotypeError naming `source`."""
        try:
            for k in ("normal", "reduce", "normal_concat", "reduce_concat"):
                if not isinstance(fields[k], (list, tuple)):
                    what = "(op, input node) pairs" if k in ("normal", "reduce") else "node numbers"
                    found = "null" if fields[k] is None else type(fields[k]).__name__
                    raise ValueError(f"{k} must be a list of {what}, found {found}")
            if search is not None and not isinstance(search, dict):
                raise ValueError(f"search must be a JSON object, found {type(search).__name__}")
            g = cls(
                normal=_edges(fields["normal"]),
                normal_concat=tuple(_node(c) for c in fields["normal_concat"]),
                reduce=_edges(fields["reduce"]),
                reduce_concat=tuple(_node(c) for c in fields["reduce_concat"]),
                search=dict(search or {}),
            )
        except (TypeError, ValueError) as e:
            raise GenotypeError(f"{source}: {e}") from None
        try:
            return g.validate()
        except GenotypeError as e:
            raise GenotypeError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "genotype") -> "Genotype":
        if not text.strip():
            raise GenotypeError(f"{source}: empty file (expected genotype JSON)")
        try:
            d = parse_json(text)
        except ValueError as e:  # malformed, NaN/Infinity, an int too long
            raise GenotypeError(f"{source}: not valid JSON ({e})") from None
        except RecursionError:
            raise GenotypeError(f"{source}: JSON nested too deeply") from None
        return cls.from_dict(d, source)

    @classmethod
    def from_darts(cls, text: str, source: str = "genotype", name: str | None = None) -> "Genotype":
        """Parse `Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), ...)` with the ast
        module, never eval. Accepted as published: concat as a list or range(...); edges flat or nested per
        node (`[[(op, i), (op, j)], ...]`, the DCP-NAS authors' file; `((op, i), (op, j))`, D-X-Y's);
        D-X-Y's `connectN=None, connects=None`. `text` may be a whole genotypes file of `NAME = Genotype(...)`
        assignments (read, never run): `name` picks one, and is needed when there are several."""
        try:
            tree = ast.parse(text.strip(), mode="exec")
        except SyntaxError as e:
            raise GenotypeError(f"{source}: not a DARTS Genotype(...) string ({e.msg})") from None
        except (RecursionError, MemoryError, ValueError):
            raise GenotypeError(f"{source}: not a DARTS Genotype(...) string (nested too deeply)") from None
        found = _genotype_calls(tree)
        if name is not None:
            if name not in found:
                raise GenotypeError(f"{source}: no genotype named {name!r}; found: {', '.join(found) or 'none'}")
            call = found[name]
        elif len(found) == 1:
            call = next(iter(found.values()))
        elif not found:
            raise GenotypeError(f"{source}: expected Genotype(normal=..., normal_concat=..., reduce=..., reduce_concat=...)")
        else:
            raise GenotypeError(f"{source}: holds {len(found)} genotypes ({', '.join(found)}); pick one as "
                                f"{source}:NAME")
        if call.args:
            raise GenotypeError(f"{source}: Genotype(...) must use keyword arguments")
        names = [kw.arg for kw in call.keywords]
        unknown = sorted(str(k) for k in names if k not in DARTS_FIELDS and k not in DXY_NONE_FIELDS)
        if unknown:
            raise GenotypeError(f"{source}: unknown field(s) {', '.join(unknown)}; expected {', '.join(DARTS_FIELDS)}")
        fields = {}
        for kw in call.keywords:
            try:
                fields[kw.arg] = _literal(kw.value)
            except (ValueError, RecursionError) as e:
                why = e if isinstance(e, ValueError) else "nested too deeply"
                raise GenotypeError(f"{source}: field {kw.arg}: {why}") from None
        not_none = [k for k in DXY_NONE_FIELDS if fields.get(k) is not None]
        if not_none:
            raise GenotypeError(f"{source}: {', '.join(not_none)} must be None (cells with extra connections "
                                f"are outside the search space)")
        missing = set(DARTS_FIELDS) - set(fields)
        if missing:
            raise GenotypeError(f"{source}: missing field(s) {', '.join(sorted(missing))}")
        return cls._checked(fields, source)

    def to_darts(self) -> str:
        return (
            f"Genotype(normal={list(self.normal)}, normal_concat={list(self.normal_concat)}, "
            f"reduce={list(self.reduce)}, reduce_concat={list(self.reduce_concat)})"
        )

    def digest(self) -> str:
        """A short hash of the architecture alone (not of the search record)."""
        arch = {k: v for k, v in self.to_dict().items() if k != "search"}
        return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]

    # -- derivation -----------------------------------------------------------------------------
    @classmethod
    def from_alphas(
        cls, alpha_normal, alpha_reduce, primitives: tuple[str, ...] = PRIMITIVES, steps: int = STEPS
    ) -> "Genotype":
        """DARTS discretisation: per node, the 2 strongest incoming edges (by their strongest non-`none`
        op weight after softmax), each with that op. alphas: [edges, len(primitives)] arrays/tensors."""
        return cls(
            normal=_parse_alpha(alpha_normal, primitives, steps),
            normal_concat=tuple(range(2, steps + 2)),
            reduce=_parse_alpha(alpha_reduce, primitives, steps),
            reduce_concat=tuple(range(2, steps + 2)),
        ).validate(primitives, steps)


def _to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _parse_alpha(alpha, primitives, steps) -> tuple[Edge, ...]:
    a = _to_numpy(alpha)
    expected = (len(edge_index(steps)), len(primitives))
    if a.shape != expected:
        raise GenotypeError(f"alpha has shape {a.shape}, expected {expected}")
    w = np.exp(a - a.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    none = primitives.index("none") if "none" in primitives else None
    out: list[Edge] = []
    start = 0
    for j in range(steps):
        n = j + 2
        rows = w[start : start + n]
        masked = rows.copy()
        if none is not None:
            masked[:, none] = -np.inf
        strength = masked.max(1)
        # stable order: strongest first, ties broken by lower input index
        chosen = sorted(sorted(range(n), key=lambda i: (-strength[i], i))[:2])
        for i in chosen:
            out.append((primitives[int(np.argmax(masked[i]))], i))
        start += n
    return tuple(out)


DARTS_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
DXY_NONE_FIELDS = ("connectN", "connects")  # D-X-Y's Genotype has them; None there means a plain DARTS cell
MAX_RANGE = 64  # a concat range longer than any cell (refused before it is built: range(10**12))


def _genotype_calls(tree: ast.Module) -> dict[str, ast.Call]:
    """The Genotype(...) calls of a parsed file: a bare expression (named "") or `NAME = Genotype(...)`."""
    def is_call(v):
        return isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "Genotype"

    out: dict[str, ast.Call] = {}
    for st in tree.body:
        if isinstance(st, ast.Expr) and is_call(st.value):
            out[""] = st.value
        elif (isinstance(st, ast.Assign) and is_call(st.value) and len(st.targets) == 1
              and isinstance(st.targets[0], ast.Name)):
            out[st.targets[0].id] = st.value
    return out


def _edges(cell) -> tuple[Edge, ...]:
    """Flat (op, input) pairs, or pairs nested per node (two per node), as flat pairs."""
    nested = [p for p in cell if isinstance(p, (list, tuple)) and p and isinstance(p[0], (list, tuple))]
    if not nested:
        return tuple(_pair(p) for p in cell)
    if len(nested) != len(cell):
        raise ValueError("edges mix flat (op, input) pairs and per-node groups")
    for k, node in enumerate(cell):
        if len(node) != 2:
            raise ValueError(f"node {k + 2} has {len(node)} input edges, expected 2")
    return tuple(_pair(p) for node in cell for p in node)


def _node(c) -> int:
    if isinstance(c, bool) or not isinstance(c, int):
        raise ValueError(f"concat entry {c!r} must be an integer node")
    return c


def _pair(p) -> Edge:
    if not isinstance(p, (list, tuple)) or len(p) != 2:
        raise ValueError(f"edge {p!r} must be an (op, input node) pair")
    op, i = p
    if not isinstance(op, str) or isinstance(i, bool) or not isinstance(i, int):
        raise ValueError(f"edge {p!r} must be (op name, integer node)")
    return op, i


def _literal(node: ast.AST):
    """Lists/tuples of strings and ints, and range(a, b); nothing else."""
    if isinstance(node, ast.Constant) and node.value is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" and not node.keywords:
        args = [_literal(a) for a in node.args]
        if not all(isinstance(a, int) for a in args) or not 1 <= len(args) <= 3:
            raise ValueError("range() takes 1 to 3 integers")
        if args[-1] == 0 and len(args) == 3:
            raise ValueError("range() step must not be zero")
        r = range(*args)
        if len(r) > MAX_RANGE:
            raise ValueError(f"range of {len(r)} nodes; a cell has at most {MAX_RANGE}")
        return list(r)
    raise ValueError(f"unsupported expression {ast.unparse(node)!r}")


def load_genotype(path: str | Path) -> Genotype:
    """Load a genotype from genotype.json or a text file holding a DARTS Genotype(...) string; FILE:NAME
    picks the genotype `NAME = Genotype(...)` of a genotypes file that holds several."""
    if not str(path).strip():
        raise GenotypeError("no genotype file given (an empty path): name a genotype.json or a DARTS genotypes file")
    path, name = Path(path), None
    if not path.exists() and ":" in path.name:  # FILE:NAME picks one genotype of a genotypes file
        stem, _, name = str(path).rpartition(":")
        path = Path(stem)
    if not path.is_file():
        raise GenotypeError(f"{path}: " + ("not a file" if path.exists() else "file not found"))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GenotypeError(f"{path}: not a text file") from None
    except OSError as e:
        raise GenotypeError(f"{path}: cannot read ({e.strerror or e})") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        if name is not None:
            raise GenotypeError(f"{path}: a JSON genotype holds one genotype; drop ':{name}'")
        return Genotype.from_json(text, source=str(path))
    return Genotype.from_darts(text, source=str(path), name=name)


# The authors' DDPNAS_MCN_2 genotype (METHOD.md section 1), for tests and benchmarks.
DDPNAS_MCN_2 = Genotype(
    normal=(
        ("sep_conv_5x5", 1), ("max_pool_3x3", 0),
        ("dil_conv_3x3", 2), ("skip_connect", 0),
        ("sep_conv_3x3", 3), ("avg_pool_3x3", 1),
        ("dil_conv_3x3", 4), ("avg_pool_3x3", 3),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(
        ("max_pool_3x3", 0), ("sep_conv_3x3", 1),
        ("dil_conv_3x3", 1), ("sep_conv_3x3", 0),
        ("max_pool_3x3", 1), ("dil_conv_5x5", 2),
        ("dil_conv_5x5", 2), ("sep_conv_5x5", 1),
    ),
    reduce_concat=(2, 3, 4, 5),
)

__all__ = ["Genotype", "load_genotype", "DDPNAS_MCN_2", "SCHEMA"]
