"""Genes, decoding and constraints of an eye evolution (one source of truth: the `evo` config).

A genome is a vector of reals, one per evolved gene (`evo.evolve`, named in the catalogue
`evo.genes`). evosax strategies search unbounded real space; `decode` maps each coordinate into its
gene's bounds — folded into [0, 1] by reflection (so samples beyond a bound come back instead of
piling up on it), then onto [low, high] linearly or logarithmically, then rounded for integer
genes — and writes the values into the fields of the individual's `EyeParams` (the eye grid,
resolution, fov, symmetric lon/lat ranges; the frame-stack size and policy width where EyeParams
carries them). Genes not evolved keep the named initial condition's values (`evo.init`).

Constraints (`evo.constraints`, a registry of small named functions like the reward functions) are
checked before training; an infeasible genome is never trained (see `aci_jax.evo.strategy`).
Everything is pure jnp, so decoding and checking vmap over a population.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig

from aci_jax.eyes.geometry import EyeParams

# Field name -> (EyeParams attribute, index or None, kind). Ranges are symmetric half-widths.
FIELDS = {
    "num_eyes.0": ("num_eyes", 0, "int"), "num_eyes.1": ("num_eyes", 1, "int"),
    "resolution.0": ("resolution", 0, "int"), "resolution.1": ("resolution", 1, "int"),
    "fov.0": ("fov", 0, "real"), "fov.1": ("fov", 1, "real"),
    "lat_range": ("lat_range", None, "range"), "lon_range": ("lon_range", None, "range"),
    "frame_stack": ("frame_stack", None, "int"), "policy_width": ("policy_width", None, "int"),
    # the optics eye's (EyeParams.optics): open radius fraction, and lens (1) or pinhole (0)
    "optics.aperture": ("optics.aperture", None, "real"), "optics.lens": ("optics.lens", None, "int"),
}
TYPES = ("int", "real")
SCALES = ("linear", "log")


@dataclasses.dataclass(frozen=True)
class Gene:
    name: str
    fields: tuple[str, ...]
    type: str
    low: float
    high: float
    scale: str = "linear"

    @property
    def span(self) -> tuple[float, float]:
        """The interval u in [0, 1] maps onto: an int gene's [low − ½, high + ½], so that rounding
        gives each integer, its end values included, a full bin (not half a bin at the ends)."""
        return (self.low - 0.5, self.high + 0.5) if self.type == "int" else (self.low, self.high)

    def value(self, u: jax.Array) -> jax.Array:
        """Gene value of a normalised coordinate u in [0, 1] (rounded for int genes)."""
        lo, hi = self.span
        v = lo * (hi / lo) ** u if self.scale == "log" else lo + (hi - lo) * u
        if self.type == "int":  # round half down at the top edge, so u = 1 gives high, not high + 1
            v = jnp.round(jnp.clip(v, lo, hi - 1e-4))
        return jnp.clip(v, self.low, self.high)

    def coordinate(self, value: float) -> float:
        """The normalised coordinate of a value (inverse of `value` before rounding)."""
        lo, hi = self.span
        if hi == lo:
            return 0.0
        if self.scale == "log":
            return math.log(value / lo) / math.log(hi / lo)
        return (value - lo) / (hi - lo)


def fold(x: jax.Array) -> jax.Array:
    """R -> [0, 1] by reflection at the bounds (a triangle wave of period 2)."""
    return 1.0 - jnp.abs(1.0 - jnp.mod(x, 2.0))


@dataclasses.dataclass(frozen=True)
class Genome:
    """The evolved genes, the base eyes they are written into, and the constraints."""

    genes: tuple[Gene, ...]
    base: EyeParams
    constraints: tuple[tuple[str, Callable, dict], ...]  # (name, fn, kwargs)

    @property
    def size(self) -> int:
        return len(self.genes)

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.genes]

    def initial(self) -> jax.Array:
        """The raw genome of the base eyes (the initial condition)."""
        return jnp.asarray([g.coordinate(_read(self.base, g.fields[0])) for g in self.genes], jnp.float32)

    def values(self, raw: jax.Array) -> jax.Array:
        """(..., n_genes) decoded gene values of raw genomes (bounded, rounded)."""
        u = fold(raw)
        return jnp.stack([g.value(u[..., i]) for i, g in enumerate(self.genes)], -1)

    def decode(self, raw: jax.Array) -> EyeParams:
        """EyeParams of one raw genome (vmap for a population)."""
        vals = self.values(raw)
        eyes = self.base
        for i, g in enumerate(self.genes):
            for f in g.fields:
                eyes = _write(eyes, f, vals[i])
        return eyes

    def feasible(self, eyes: EyeParams) -> tuple[jax.Array, jax.Array]:
        """(ok, (n_constraints,) bool of violated constraints) of one individual's eyes."""
        bad = jnp.stack([~fn(eyes, **kw) for _, fn, kw in self.constraints]) if self.constraints \
            else jnp.zeros((0,), bool)
        return ~bad.any(), bad

    def reasons(self, bad: np.ndarray) -> str:
        """The names of the violated constraints of one individual ('' when feasible)."""
        return ";".join(name for (name, _, _), b in zip(self.constraints, np.asarray(bad)) if b)


def _get(eyes: EyeParams, attr: str):
    for part in attr.split("."):
        eyes = getattr(eyes, part)
    return eyes


def _set(eyes: EyeParams, attr: str, value) -> EyeParams:
    head, _, rest = attr.partition(".")
    return eyes.replace(**{head: _set(getattr(eyes, head), rest, value) if rest else value})


def _read(eyes: EyeParams, field: str) -> float:
    attr, idx, kind = FIELDS[field]
    v = np.asarray(_get(eyes, attr))
    if kind == "range":
        return float((v[1] - v[0]) / 2)
    return float(v if idx is None else v[idx])


def _write(eyes: EyeParams, field: str, value: jax.Array) -> EyeParams:
    attr, idx, kind = FIELDS[field]
    old = _get(eyes, attr)
    if kind == "range":  # symmetric half-width about the range's centre
        centre = (old[0] + old[1]) / 2
        new = jnp.stack([centre - value, centre + value]).astype(old.dtype)
    elif idx is None:  # the field's own dtype (the optics eye's lens is a float 0/1)
        new = jnp.asarray(value, old.dtype if old is not None else jnp.int32 if kind == "int" else jnp.float32)
    else:
        new = old.at[idx].set(value.astype(old.dtype))
    return _set(eyes, attr, new)


# -- constraints ------------------------------------------------------------------------------------

def pixels(eyes: EyeParams) -> jax.Array:
    return eyes.num_eyes[0] * eyes.num_eyes[1] * eyes.resolution[0] * eyes.resolution[1]


def total_pixels(eyes: EyeParams, budget: int = 50) -> jax.Array:
    """ACI: eyes × width × height ≤ budget."""
    return pixels(eyes) <= budget


def pixel_memory(eyes: EyeParams, budget: int = 300, frame_stack: int = 1) -> jax.Array:
    """ACI: pixels × frame-stack size ≤ budget (the individual's own stack when it evolves)."""
    stack = getattr(eyes, "frame_stack", None)
    stack = frame_stack if stack is None else stack
    return pixels(eyes) * stack <= budget


def fits_body(eyes: EyeParams, radius: float = 0.2, pixel_size: float = 5e-3) -> jax.Array:
    """Neighbouring eyes of a lon row do not overlap on the body: an eye's width on the sphere
    (pixels across × `pixel_size` m) is at most the arc between neighbouring eye centres (radius ×
    lon spacing; n eyes over a range include its ends, over a full circle they are 2π/n apart). A
    single eye always fits. ACI states this as resolution × 5e-3 × eyes < lon span × 0.1, which
    excludes its own published detection result (3 eyes × 14 px over 60°: 0.21 > 0.105)."""
    n = eyes.num_eyes[1].astype(jnp.float32)
    span = jnp.deg2rad(eyes.lon_range[1] - eyes.lon_range[0])
    spacing = jnp.where(span >= 2 * jnp.pi - 1e-6, 2 * jnp.pi / n, span / jnp.maximum(n - 1, 1))
    return (n <= 1) | (eyes.resolution[0] * pixel_size <= radius * spacing + 1e-9)


CONSTRAINTS: dict[str, Callable] = {f.__name__: f for f in (total_pixels, pixel_memory, fits_body)}


# -- from config ------------------------------------------------------------------------------------

def genome_from_config(evo, eyes_cfg, frame_stack: int = 1) -> Genome:
    """The Genome of an `evo` config section and the exp's eye config; ValueError naming the gene,
    field or constraint on bad input (the config edge turns it into a ConfigError)."""
    base = dict(eyes_cfg)
    inits = dict(evo.get("inits") or {})
    init = evo.get("init")
    if init is not None:
        if init not in inits:
            raise ValueError(f"evo.init={init!r}; valid: {sorted(inits)}")
        for k, v in dict(inits[init]).items():
            if k not in ("num_eyes", "resolution", "fov", "lat_range", "lon_range", "frame_stack", "policy_width"):
                raise ValueError(f"evo.inits.{init}.{k}: unknown eye field; valid: num_eyes, resolution, "
                                 f"fov, lat_range, lon_range, frame_stack, policy_width")
            base[k] = v
    eyes = EyeParams.from_config(base)
    catalogue = dict(evo.get("genes") or {})
    evolve = list(evo.get("evolve") or [])
    if not evolve:
        raise ValueError(f"evo.evolve is empty; name genes from evo.genes: {sorted(catalogue)}")
    genes = []
    for name in evolve:
        if name not in catalogue:
            raise ValueError(f"evo.evolve names unknown gene {name!r}; valid: {sorted(catalogue)}")
        genes.append(_gene(name, dict(catalogue[name])))
    for g in genes:
        for f in g.fields:
            attr = FIELDS[f][0]
            if attr.startswith("optics.") and eyes.optics is None:
                raise ValueError(f"evo.genes.{g.name}: field {f!r} needs the optics eye, which is off in this "
                                 "exp; enable it (eyes.optics.enabled=true) or use exp=detection_optics")
            if attr in ("frame_stack", "policy_width"):
                if attr not in {fl.name for fl in dataclasses.fields(EyeParams)}:
                    raise ValueError(f"evo.genes.{g.name}.fields: {f!r} is not available in this build")
                if getattr(eyes, attr, None) is None:
                    eyes = eyes.replace(**{attr: jnp.int32(_default_trainer_gene(attr, frame_stack))})
        v = _read(eyes, g.fields[0])
        if not g.low <= v <= g.high:
            raise ValueError(f"evo.genes.{g.name}: initial value {v} (evo.init={init!r}) is outside its "
                             f"bounds [{g.low}, {g.high}]: it must be within them")
    constraints = []
    given = evo.get("constraints") or {}
    if not isinstance(given, (dict, DictConfig)):
        raise ValueError(f"evo.constraints={given!r} must be a mapping of name -> {{fn: ..., arguments}}, e.g. "
                         f"{{pixels: {{fn: total_pixels, budget: 50}}}}; valid fns: {sorted(CONSTRAINTS)}")
    for name, spec in dict(given).items():
        if spec is not None and not isinstance(spec, (dict, DictConfig)):
            raise ValueError(f"evo.constraints.{name}={spec!r} must be a mapping {{fn: ..., arguments}}; "
                             f"valid fns: {sorted(CONSTRAINTS)}")
        spec = dict(spec or {})
        fn = spec.pop("fn", name)
        if fn not in CONSTRAINTS:
            raise ValueError(f"evo.constraints.{name}.fn={fn!r}; valid: {sorted(CONSTRAINTS)}")
        import inspect

        params = set(inspect.signature(CONSTRAINTS[fn]).parameters) - {"eyes"}
        if set(spec) - params:
            raise ValueError(f"evo.constraints.{name}: unknown argument(s) {sorted(set(spec) - params)}; "
                             f"valid: {sorted(params)}")
        if fn == "pixel_memory":
            spec.setdefault("frame_stack", frame_stack)
        constraints.append((name, CONSTRAINTS[fn], spec))
    return Genome(tuple(genes), eyes, tuple(constraints))


def _default_trainer_gene(attr: str, frame_stack: int) -> int:
    return frame_stack if attr == "frame_stack" else 64


def _gene(name: str, spec: dict) -> Gene:
    where = f"evo.genes.{name}"
    fields = spec.get("fields")
    fields = [fields] if isinstance(fields, str) else list(fields or [])
    if not fields:
        raise ValueError(f"{where}.fields is missing; valid fields: {sorted(FIELDS)}")
    for f in fields:
        if f not in FIELDS:
            raise ValueError(f"{where}.fields: unknown field {f!r}; valid: {sorted(FIELDS)}")
    typ, scale = spec.get("type", "real"), spec.get("scale", "linear")
    if typ not in TYPES:
        raise ValueError(f"{where}.type={typ!r}; valid: {list(TYPES)}")
    if scale not in SCALES:
        raise ValueError(f"{where}.scale={scale!r}; valid: {list(SCALES)}")
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{where}: low and high must be numbers, got {spec.get('low')!r}, {spec.get('high')!r}") from None
    if low > high:
        raise ValueError(f"{where}: low={low} > high={high}; need low <= high")
    if scale == "log" and low <= 0:
        raise ValueError(f"{where}: a log-scale gene needs low > 0, got {low}")
    if typ == "int" and FIELDS[fields[0]][2] == "real" or typ == "real" and FIELDS[fields[0]][2] == "int":
        raise ValueError(f"{where}.type={typ!r} does not fit field {fields[0]!r} "
                         f"({FIELDS[fields[0]][2]}); valid: {'real' if FIELDS[fields[0]][2] == 'real' else 'int'}")
    return Gene(name, tuple(fields), typ, low, high, scale)


def static_maxima(genome: Genome) -> dict[str, int]:
    """Static buffer sizes that hold every feasible individual: the gene bounds, capped by the
    pixel budget (no feasible individual has more eyes, or pixels across, than the budget)."""
    hi = {f: None for f in FIELDS}
    for g in genome.genes:
        for f in g.fields:
            hi[f] = g.high
    val = lambda f: hi[f] if hi[f] is not None else _read(genome.base, f)
    budget = min([kw.get("budget", 50) for name, fn, kw in genome.constraints if fn is total_pixels] or [math.inf])
    eyes = val("num_eyes.0") * val("num_eyes.1")
    res = max(val("resolution.0"), val("resolution.1"))
    w, h = min(val("resolution.0"), budget), min(val("resolution.1"), budget)
    out = {"max_eyes": int(min(eyes, budget)), "max_resolution": int(min(res, budget)),
           "max_width": int(w), "max_height": int(h),
           "max_pixels": int(min(eyes * val("resolution.0") * val("resolution.1"), budget))}
    if hi["frame_stack"] is not None:
        out["frame_stack"] = int(hi["frame_stack"])
    if hi["policy_width"] is not None:
        out["policy_width"] = int(hi["policy_width"])
    return out


def as_config(eyes: EyeParams) -> dict[str, Any]:
    """One individual's decoded eyes as an eye config (lists of Python numbers)."""
    e = jax.device_get(eyes)
    out = {"num_eyes": [int(x) for x in e.num_eyes], "resolution": [int(x) for x in e.resolution],
           "fov": [float(x) for x in e.fov], "lat_range": [float(x) for x in e.lat_range],
           "lon_range": [float(x) for x in e.lon_range]}
    for attr in ("frame_stack", "policy_width"):
        if getattr(e, attr, None) is not None:
            out[attr] = int(getattr(e, attr))
    if getattr(e, "optics", None) is not None:
        out["optics"] = {"aperture": float(e.optics.aperture), "lens": bool(float(e.optics.lens) >= 0.5)}
    return out
