"""Deterministic, stratified train/val/test splits.

Within each stratum, images are ordered by a seeded hash of their path, so a split depends only
on the seed and the data, never on file-system order or the platform's random generator, and
adding images to one stratum never moves images of another.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from zerodefect.datasets.manifest import FOLDED_KEY, SPLITS, DatasetError, Manifest, Sample


def stratum_key(sample: Sample, meta_keys: Sequence[str] = ()) -> tuple:
    """Labels plus the chosen metadata fields (e.g. ELPV's probability and cell type)."""
    parts: list = [tuple(sorted(set(sample.labels)))]
    for key in meta_keys:
        value = sample.meta.get(key)
        parts.append(round(value, 3) if isinstance(value, float) else value)
    return tuple(parts)


def assign_splits(
    manifest: Manifest,
    test: float = 0.2,
    val: float = 0.1,
    seed: int = 0,
    stratify_on: Sequence[str] = (),
    keep_existing: bool = False,
) -> Manifest:
    """Give every sample a split, stratified on labels and `stratify_on` metadata keys.

    Per stratum of n images: the first round(n*test) go to test, the next round(n*val) to val,
    the rest to train. With keep_existing, samples that already have a split keep it.
    """
    if not 0 <= test < 1 or not 0 <= val < 1 or test + val >= 1:
        raise ValueError(f"bad split fractions test={test} val={val}")
    strata: dict[tuple, list[Sample]] = defaultdict(list)
    for sample in manifest.samples:
        if keep_existing and sample.split:
            continue
        strata[stratum_key(sample, stratify_on)].append(sample)
    for members in strata.values():
        members[:] = _ordered(members, seed)
        n_test = round(len(members) * test)
        n_val = round(len(members) * val)
        for i, sample in enumerate(members):
            sample.split = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return manifest


DEFAULT_TEST = 0.2
DEFAULT_VAL = 0.1


def _ordered(members: list[Sample], seed: int) -> list[Sample]:
    return sorted(members, key=lambda s: (hashlib.sha256(f"{seed}:{s.path}".encode()).hexdigest(), s.path))


def carve(manifest: Manifest, share: float, into: str, seed: int = 0, stratify_on: Sequence[str] = ()) -> int:
    """Move a seeded, stratified `share` of the train split into split `into`; how many moved.

    For a source that ships train/test folders but no val: the run needs val images (best
    epoch, threshold calibration) and they may only come from train, never from test.
    """
    strata: dict[tuple, list[Sample]] = defaultdict(list)
    for sample in manifest.split("train"):
        strata[stratum_key(sample, stratify_on)].append(sample)
    moved = 0
    for members in strata.values():
        for sample in _ordered(members, seed)[: round(len(members) * share)]:
            sample.split = into
            moved += 1
    return moved


def split_dataset(
    manifest: Manifest,
    test: float | None = None,
    val: float | None = None,
    seed: int | None = None,
    stratify_on: Sequence[str] = (),
    keep_existing: bool = True,
    split_file: str | Path | None = None,
    option: str = "--",
) -> list[str]:
    """Give every sample a split the way `datasets import` and `train`'s data.source do; return
    notes saying what happened that the user did not spell out.

    `test`, `val` and `seed` are None when not given (defaults 0.2, 0.1, 0); a given value that
    cannot apply is an error naming it, never ignored: a share of a split the source already
    has (its own test/ folder), or any of them next to a split file. With keep_existing, a
    source's own splits stay, and a split it lacks (val, or test) is carved out of its train
    split, stratified and seeded. Samples carrying a folded class (meta `defect_type`) are
    stratified on it too. `option` prefixes the names in errors: "--" for the command line,
    "data.source.split." for a config.
    """
    stratify = list(stratify_on)
    if any(FOLDED_KEY in s.meta for s in manifest.samples) and FOLDED_KEY not in stratify:
        stratify.append(FOLDED_KEY)
    if split_file is not None:
        given = [
            f"{option}{n} {v}" for n, v in (("test", test), ("val", val), ("seed", seed)) if v is not None
        ]
        given += [f"{option}stratify{'-' if option == '--' else '_'}on {k}" for k in stratify_on]
        if given:
            raise DatasetError(
                f"the split file {split_file} gives every image its split: {', '.join(given)} cannot apply"
            )
        apply_split_file(manifest, split_file)
        return [f"splits from {split_file}"]
    own = Counter(s.split for s in manifest.samples if s.split) if keep_existing else Counter()
    for name, share in (("test", test), ("val", val)):
        if share is not None and own[name]:
            raise DatasetError(
                f"{option}{name} {share} cannot apply: the source has its own {name} split ({own[name]} images); "
                f"drop {option}{name}"
                + (", or pass --no-keep-splits to split everything anew" if option == "--" else "")
            )
    given_seed = seed
    seed = 0 if seed is None else seed
    test_share = DEFAULT_TEST if test is None else test
    val_share = DEFAULT_VAL if val is None else val
    # The seed and stratification act only on images the split decides: unassigned ones, or a
    # split carved out of train.
    decided = sum(not s.split for s in manifest.samples) if keep_existing else len(manifest.samples)
    decided += sum(share > 0 and not own[name] for name, share in (("val", val_share), ("test", test_share)))
    if own and not decided:
        unused = [f"{option}seed {given_seed}"] if given_seed is not None else []
        unused += [f"{option}stratify{'-' if option == '--' else '_'}on {k}" for k in stratify_on]
        if unused:
            raise DatasetError(
                f"{', '.join(unused)} cannot apply: the source gives every image its split "
                f"({', '.join(n for n in SPLITS if own[n])})"
            )
    assign_splits(manifest, test_share, val_share, seed, stratify, keep_existing=keep_existing)
    notes = []
    if own:
        kept = ", ".join(f"{n} {own[n]}" for n in SPLITS if own[n])
        notes.append(f"kept the source's own splits ({kept} images)")
        for name, share in (("val", val_share), ("test", test_share)):
            if share > 0 and not manifest.split(name):
                if not manifest.split("train"):
                    raise DatasetError(
                        f"{manifest.name}: no {name} split and no train split to carve one from"
                    )
                moved = carve(manifest, share, name, seed, stratify)
                by = ", ".join(["labels", *stratify])
                if moved:
                    notes.append(
                        f"the source has no {name} split: {moved} images ({share:.0%} of train, stratified on "
                        f"{by}, seed {seed}) carved out of train into {name}"
                    )
                else:
                    notes.append(
                        f"the source has no {name} split, and {share:.0%} of each class of its train split rounds "
                        f"to no image: {name} stays empty (add images, or give it a larger share)"
                    )
    return notes


def apply_split_file(manifest: Manifest, path: str | Path) -> Manifest:
    """Give every sample the split a CSV file names (columns `split` and `image`, the image's
    path as the manifest lists it; lines starting with # are comments): a published or
    committed split, so that two models, or two teams, are measured on the very same parts.

    Every sample must be listed, and every listed image must be in the manifest: a split that
    silently dropped or invented parts would make the comparison it exists for meaningless."""
    path = Path(path)
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the split file ({exc.strerror})") from None
    rows = list(csv.DictReader(lines))
    if not rows or not {"split", "image"} <= set(rows[0]):
        raise DatasetError(f"{path}: a split file needs the columns split,image")
    wanted: dict[str, str] = {}
    for number, row in enumerate(rows, start=2):
        if row["split"] not in SPLITS:
            raise DatasetError(f"{path}:{number}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
        wanted[row["image"]] = row["split"]
    listed = {s.path for s in manifest.samples}
    unknown = sorted(set(wanted) - listed)
    missing = sorted(listed - set(wanted))
    if unknown or missing:
        raise DatasetError(
            f"{path}: the split file and the manifest list different images: "
            f"{len(missing)} not in the file (e.g. {missing[:3]}), {len(unknown)} not in the manifest "
            f"(e.g. {unknown[:3]})"
        )
    for sample in manifest.samples:
        sample.split = wanted[sample.path]
    return manifest
