"""Maze maps: the text language of ACI's maze files, parsed into grids and merged wall boxes.

A map is rows of cells: `0` empty, `1` wall, `1:X` wall of texture group X, `R` reset (spawn)
cell of the default agent group, `R:X` reset cell of agent group X. Cell (i, j) has its centre at
x = (j + 0.5)·scale − width/2, y = length/2 − (i + 0.5)·scale, relative to the maze's centre.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

DEFAULT_GROUP = "default"
_CELL = re.compile(r"^(0|1|R)(?::([A-Za-z0-9_]+))?$")
VALID_CELLS = "'0', '1', '1:X', 'R' or 'R:X' (X a group name of letters, digits or '_')"


class MazeError(ValueError):
    """A maze map or maze option that cannot be built."""


@dataclasses.dataclass(frozen=True)
class WallBox:
    """A merged rectangle of wall cells of one texture group: rows i0..i1, cols j0..j1 (inclusive)."""

    i0: int
    j0: int
    i1: int
    j1: int
    group: str


@dataclasses.dataclass(frozen=True)
class Maze:
    """One parsed maze: cell grid after flips/rotation, wall groups, reset cells per agent group."""

    name: str
    wall: np.ndarray  # (rows, cols) bool
    wall_group: np.ndarray  # (rows, cols) object: texture group of each wall cell, '' elsewhere
    reset_cells: dict[str, list[tuple[int, int]]]  # agent group -> [(i, j)]
    scale: float
    height: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.wall.shape

    @property
    def width(self) -> float:
        return self.wall.shape[1] * self.scale

    @property
    def length(self) -> float:
        return self.wall.shape[0] * self.scale

    @property
    def wall_half_height(self) -> float:
        return self.scale / 2 * self.height

    def cell_center(self, i, j) -> np.ndarray:
        """Centre (x, y) of cell (i, j) relative to the maze centre; broadcasts over arrays."""
        x = (np.asarray(j) + 0.5) * self.scale - self.width / 2
        y = self.length / 2 - (np.asarray(i) + 0.5) * self.scale
        return np.stack([x, y], axis=-1)

    def wall_boxes(self) -> list[WallBox]:
        """Wall cells merged into few rectangles (same group only), so physics and rays stay cheap.

        Horizontal runs first, then runs with equal column span stacked over consecutive rows.
        """
        rows, cols = self.shape
        runs = []
        for i in range(rows):
            j = 0
            while j < cols:
                if not self.wall[i, j]:
                    j += 1
                    continue
                g, j0 = self.wall_group[i, j], j
                while j + 1 < cols and self.wall[i, j + 1] and self.wall_group[i, j + 1] == g:
                    j += 1
                runs.append((i, j0, j, g))
                j += 1
        last_box: dict[tuple[int, int, str], int] = {}  # column span and group -> latest box
        boxes: list[list] = []
        for i, j0, j1, g in runs:
            key = (j0, j1, g)
            prev = last_box.get(key)
            if prev is not None and boxes[prev][2] == i - 1:
                boxes[prev][2] = i
            else:
                last_box[key] = len(boxes)
                boxes.append([i, j0, i, j1, g])
        return [WallBox(i0, j0, i1, j1, g) for i0, j0, i1, j1, g in boxes]


def parse_map(text: str, name: str = "maze") -> list[list[str]]:
    """Split a map literal like `[[1, 0, R:O], ...]` into rows of cell tokens (validated)."""
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise MazeError(f"maze '{name}': map must be a list of rows like [[1, 0, R], ...]")
    rows = re.findall(r"\[([^\[\]]*)\]", body[1:-1])
    if not rows:
        raise MazeError(f"maze '{name}': map has no rows")
    grid = [[tok.strip() for tok in row.split(",") if tok.strip()] for row in rows]
    widths = {len(r) for r in grid}
    if len(widths) != 1:
        raise MazeError(f"maze '{name}': rows have different lengths {sorted(widths)}")
    for i, row in enumerate(grid):
        for j, tok in enumerate(row):
            if not _CELL.match(tok):
                raise MazeError(
                    f"maze '{name}': unknown cell '{tok}' at row {i}, col {j}; valid: {VALID_CELLS}"
                )
    return grid


def build_maze(
    name: str,
    map: str,
    scale: float = 2.0,
    height: float = 0.5,
    hflip: bool = False,
    vflip: bool = False,
    rotation: int = 0,
) -> Maze:
    """Parse a map and apply flips (h: columns, v: rows) and a rotation (multiples of 90°, CCW)."""
    if scale <= 0:
        raise MazeError(f"maze '{name}': scale={scale} must be > 0")
    if height <= 0:
        raise MazeError(f"maze '{name}': height={height} must be > 0")
    if rotation % 90 != 0:
        raise MazeError(f"maze '{name}': rotation={rotation} must be a multiple of 90")
    grid = np.array(parse_map(map, name), dtype=object)
    if hflip:
        grid = grid[:, ::-1]
    if vflip:
        grid = grid[::-1, :]
    grid = np.rot90(grid, k=(rotation // 90) % 4)
    kind = np.vectorize(lambda t: _CELL.match(t).group(1), otypes=[object])(grid)
    group = np.vectorize(lambda t: _CELL.match(t).group(2) or DEFAULT_GROUP, otypes=[object])(grid)
    wall = kind == "1"
    wall_group = np.where(wall, group, "")
    reset_cells: dict[str, list[tuple[int, int]]] = {}
    for i, j in zip(*np.nonzero(kind == "R")):
        reset_cells.setdefault(group[i, j], []).append((int(i), int(j)))
    return Maze(name, wall, wall_group, reset_cells, float(scale), float(height))


def maze_from_config(name: str, cfg) -> Maze:
    """Build a maze from its config section (extra keys such as texture maps are ignored here)."""
    keys = ("map", "scale", "height", "hflip", "vflip", "rotation")
    return build_maze(name, **{k: cfg[k] for k in keys if k in cfg})


# Neighbour order of shortest-path steps (row, col offsets): north, south, west, east. Only the four
# side neighbours: the straight line between two side-adjacent free cell centres stays in free cells.
STEPS = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)])


def next_cell_table(wall: np.ndarray) -> np.ndarray:
    """Shortest paths of a grid as a lookup table, built once per maze (numpy/scipy BFS).

    Cells are flat indices i·cols + j. Returns `nxt` (n, n) int32 with n = rows·cols: `nxt[goal, c]`
    is the side neighbour of cell c one step closer to `goal` along a shortest path of free cells
    (ties: the first in `STEPS` order); c itself when c == goal, when either is a wall, or when no
    path joins them. Following `nxt[goal]` from any free cell reaches `goal` in dist(c, goal) steps.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import shortest_path

    rows, cols = wall.shape
    n = rows * cols
    free = ~wall.reshape(-1)
    i, j = np.divmod(np.arange(n), cols)
    nbr = -np.ones((4, n), np.int64)  # side neighbour of each cell per step, -1: outside or a wall
    for k, (di, dj) in enumerate(STEPS):
        ni, nj = i + di, j + dj
        ok = (ni >= 0) & (ni < rows) & (nj >= 0) & (nj < cols)
        idx = np.where(ok, ni * cols + nj, 0)
        nbr[k] = np.where(ok & free & free[idx], idx, -1)
    src, dst = np.nonzero(nbr.T >= 0)
    graph = coo_matrix((np.ones(len(src)), (src, nbr.T[src, dst])), shape=(n, n)).tocsr()
    dist = shortest_path(graph, unweighted=True, directed=False)  # (goal, cell), inf: unreachable
    nxt = np.broadcast_to(np.arange(n), (n, n)).copy()
    chosen = np.zeros((n, n), bool)
    for k in range(4):
        nb = nbr[k]
        d_nb = np.where(nb >= 0, dist[:, np.maximum(nb, 0)], np.inf)
        closer = ~chosen & np.isfinite(dist) & (d_nb == dist - 1)
        nxt = np.where(closer, nb[None, :], nxt)
        chosen |= closer
    return nxt.astype(np.int32)
