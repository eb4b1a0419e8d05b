#!/usr/bin/env bash
# copy a landscape run's small results (no checkpoints) into the repository
set -e
src=$1; dst=$2
mkdir -p "$dst"
for f in landscape.csv landscape.json plots/landscape.png config.yaml; do [ -f "$src/$f" ] && cp "$src/$f" "$dst/$(basename $f)"; done
for d in "$src"/*/; do
  n=$(basename "$d"); [ -f "$d/seeds.jsonl" ] || continue
  mkdir -p "$dst/$n"
  for f in seeds.jsonl seeds.csv summary.json plots/seeds.png; do [ -f "$d/$f" ] && cp "$d/$f" "$dst/$n/$(basename $f)"; done
done
du -sh "$dst"
