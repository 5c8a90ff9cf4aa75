"""What a run costs as the work grows: a plain and an augmented run at 1x, 2x, 4x and 8x the training
images, at 150 and 224 px, with each run's peak memory and the cache it leaves.

    python bench/cost_scaling.py --data ../shared/datasets/clothing-small
    python bench/cost_scaling.py --data ../shared/datasets/clothing-small --scales 1,2,4 --sizes 150

`experiment=cpu` (frozen ImageNet EfficientNet-Lite0, batch 32), `none` and `lesson`, a fixed number of
epochs (`--epochs`, patience as long: every run trains exactly that many, so runs differ only in their
images). The scaled training sets are copies of the training images, each copy with distinct bytes (one
pixel changed and saved again), so that nothing is served from the cache twice; validation and test stay
as they are. Every run is `python -m pipeline.train` in a process of its own, timed whole, with its peak
resident memory from the kernel (`wait4`: the cache files mapped in count too) and its peak anonymous
memory (what no file backs), the cache of decoded images and features emptied before it (what grows
with the images is computed by every run; the frozen base is converted by a warm-up run). Last lines,
per size and preset: `seconds_per_1000_images=<size>:<preset>:<per scale>` (the start-up of a run, some
15 s, weighs on the small scales), `seconds_per_1000_added_images=...` (the cost of the images added from
one scale to the next: constant when the cost grows linearly), `anonymous_mib_per_1000_added_images=...`
(0 when the cache, not memory, holds what grows) and `growth_8x=<time at the largest scale / time at 1x /
the scale>` with the memory's growth.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
ARRAYS = "arrays"  # the cache's decoded images and features (paths.cache_dir); its converted networks stay


def scaled_copy(source: Path, target: Path, scale: int) -> int:
    """`source`'s layout (train/, validation/, test/) in `target`, train/ holding `scale` copies of every
    training image (copy c with the pixel (0, 0) raised by c, so its bytes differ); the rest linked."""
    count = 0
    for folder in source.iterdir():
        if folder.name != "train":
            if folder.is_dir():
                (target / folder.name).symlink_to(folder.resolve())
            continue
        for image in sorted(folder.rglob("*.jpg")):
            relative = image.relative_to(folder)
            (target / "train" / relative.parent).mkdir(parents=True, exist_ok=True)
            pixels = Image.open(image).convert("RGB")
            for copy in range(scale):
                changed = pixels.copy()
                r, g, b = changed.getpixel((0, 0))
                changed.putpixel((0, 0), ((r + copy) % 256, g, b))
                changed.save(target / "train" / relative.parent / f"{image.stem}-{copy}.jpg", quality=95)
                count += 1
    return count


def anonymous_mib(pid: int) -> float:
    """The process's resident memory that no file backs (RssAnon: what the kernel cannot drop to reclaim
    it), in MiB; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def timed_run(args: list[str]) -> tuple[float, float, float]:
    """(seconds, peak resident MiB, peak anonymous MiB) of one `python -m pipeline.train` with `args`.

    The kernel's peak (`wait4`) counts the pages of files mapped in, the cache's entries among them,
    which the kernel drops again when memory is short; the anonymous peak (sampled every 50 ms) is the
    memory the run itself holds."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline.train", *args],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    anonymous_peak, ended = 0.0, threading.Event()

    def sample() -> None:
        nonlocal anonymous_peak
        while not ended.wait(0.05):
            anonymous_peak = max(anonymous_peak, anonymous_mib(child.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(child.pid, 0)
    ended.set()
    sampler.join()
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"run failed ({' '.join(args[:4])} ...): {child.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, anonymous_peak


class Run(NamedTuple):
    seconds: float
    peak_mib: float  # the kernel's peak resident memory
    anonymous_mib: float  # the peak of what no file backs
    images: int
    cache_mib: float


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a dataset with train/, validation/ and test/ folders")
    parser.add_argument("--scales", default="1,2,4,8", help="training set sizes, in copies of its images")
    parser.add_argument("--sizes", default="150,224", help="image sizes in pixels (square)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs every run trains")
    parser.add_argument("--presets", default="none,lesson")
    parser.add_argument("--folder", default=None, help="where the copies, stores and caches go (default: a temp)")
    options = parser.parse_args()
    scales = [int(s) for s in options.scales.split(",")]
    sizes = [int(s) for s in options.sizes.split(",")]
    presets = options.presets.split(",")
    work = Path(options.folder or tempfile.mkdtemp(prefix="cost-scaling-"))
    cache = work / "cache"
    print(f"work folder {work}; {os.cpu_count()} CPUs", flush=True)

    results: dict[tuple[int, str, int], Run] = {}  # by (size, preset, scale)
    warmed: set[int] = set()
    for scale in scales:
        data = work / f"data-x{scale}"
        if not (data / "train").exists():
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir(parents=True)
            images = scaled_copy(Path(options.data), data, scale)
            print(f"x{scale}: {images} training images", flush=True)
        split = work / f"split-x{scale}"
        if not (split / "train.csv").exists():
            subprocess.run(
                [sys.executable, "-m", "pipeline.split", f"data.source={data}", f"paths.split_dir={split}"]
                + [f"paths.reports_dir={work / 'reports'}", f"paths.cache_dir={cache}"],
                cwd=ROOT,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        images = sum(1 for _ in open(split / "train.csv")) - 1
        for size in sizes:
            for preset in presets:
                folder = work / f"run-x{scale}-{size}-{preset}"
                args = [
                    "experiment=cpu",
                    f"augmentation={preset}",
                    f"data.image_size=[{size},{size}]",
                    f"train.epochs={options.epochs}",
                    f"train.patience={options.epochs}",
                    f"paths.split_dir={split}",
                    f"paths.cache_dir={cache}",
                    f"paths.models_dir={folder}/models",
                    f"paths.reports_dir={folder}/reports",
                    f"tracking.uri=sqlite:///{work}/mlflow.db",
                    f"hydra.run.dir={folder}/hydra",
                    "train.rerun=true",
                ]
                if size not in warmed:  # warm-up: the frozen base converted for OpenVINO, once per size
                    timed_run(args)
                    warmed.add(size)
                shutil.rmtree(cache / ARRAYS, ignore_errors=True)  # every run decodes and computes its own images
                seconds, peak, anonymous = timed_run(args)
                run = results[(size, preset, scale)] = Run(seconds, peak, anonymous, images, folder_mib(cache / ARRAYS))
                print(
                    f"{size} px {preset:8s} x{scale}: {images} images, {seconds:7.1f} s, "
                    f"{1000 * seconds / images:6.1f} s per 1000 images, peak {peak:6.0f} MiB "
                    f"({anonymous:.0f} anonymous), cache {run.cache_mib:.0f} MiB",
                    flush=True,
                )

    header = " | ".join(f"x{s} s (s/1000 img)" for s in scales)
    print(f"\n| px | preset | {header} | peak MiB {' / '.join(f'x{s}' for s in scales)} | anonymous |")
    print("|---|---|" + "---|" * (len(scales) + 2))
    for size in sizes:
        for preset in presets:
            runs = [results[(size, preset, s)] for s in scales]
            timings = " | ".join(f"{r.seconds:.0f} ({1000 * r.seconds / r.images:.1f})" for r in runs)
            peaks = " / ".join(f"{r.peak_mib:.0f}" for r in runs)
            anonymous = " / ".join(f"{r.anonymous_mib:.0f}" for r in runs)
            print(f"| {size} | {preset} | {timings} | {peaks} | {anonymous} |")
    for size in sizes:
        for preset in presets:
            runs = [results[(size, preset, s)] for s in scales]
            first, last = runs[0], runs[-1]
            per_image = [f"{1000 * r.seconds / r.images:.1f}" for r in runs]
            growth = (last.seconds / first.seconds) / (last.images / first.images)
            added = list(zip(runs, runs[1:]))  # the images added from one scale to the next
            marginal = [f"{1000 * (b.seconds - a.seconds) / (b.images - a.images):.1f}" for a, b in added]
            added_anonymous = [
                f"{1000 * (b.anonymous_mib - a.anonymous_mib) / (b.images - a.images):.0f}" for a, b in added
            ]
            print(f"seconds_per_1000_images={size}:{preset}:{','.join(per_image)}")
            print(f"seconds_per_1000_added_images={size}:{preset}:{','.join(marginal)}")
            print(f"anonymous_mib_per_1000_added_images={size}:{preset}:{','.join(added_anonymous)}")
            print(
                f"growth_{scales[-1]}x={size}:{preset}:time {growth:.2f},peak_memory "
                f"{last.peak_mib / first.peak_mib:.2f},anonymous_memory {last.anonymous_mib / first.anonymous_mib:.2f}"
            )


if __name__ == "__main__":
    main()
