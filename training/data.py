"""Cached training photos for autodir-tiny (issue 5), a fixed validation split and a patch sampler.

Image sources (nothing else is allowed):
  * the Debian packages plasma-workspace-wallpapers, gnome-backgrounds, mate-backgrounds and
    ukui-wallpapers, fetched with `apt-get download` and unpacked with `dpkg -x` (no root, nothing
    installed) into <cache>/debs and <cache>/unpacked/<package>;
  * the images bundled inside the scikit-image wheel (`skimage/data/*.png|*.jpg`; nothing that
    would need a pooch download).

Selection (deterministic, no randomness):
  1. Candidates: *.jpg, *.jpeg, *.png, *.webp (SVG and XML are never read). KDE `screenshot.*`
     thumbnails are skipped.
  2. Duplicates: the same picture shipped at several resolutions keeps only its largest file
     (plasma: one per wallpaper and per `images`/`images_dark` folder; elsewhere the file stem with
     any `_<W>x<H>` suffix removed).
  3. "Flat illustration" rejection. Statistics are computed on the picture resized (bicubic) so that
     its long side is 512 px, on luma Y = 0.299 R + 0.587 G + 0.114 B in [0, 1]:
       - grad      = mean Sobel gradient magnitude of Y (scipy.ndimage.sobel, both axes, hypot);
       - colours   = number of distinct RGB colours after quantising each channel to 6 bits;
       - flat_frac = fraction of pixels whose 5x5 local standard deviation of Y is < 1/255.
     An image is KEPT only if
       short side >= 256 px  and  less than 1 % of its pixels are transparent (alpha < 255)
       and grad >= 0.05  and  colours >= 48  and  flat_frac <= 0.5.
     (Photographs score grad 0.06-0.6 and are flat on well under half of their area, even with
     bokeh; vector wallpapers with large smooth gradients, logos, silhouettes, transparent overlays
     and synthetic test charts fail at least one test. Busy rendered patterns, e.g. GNOME's
     "licorice" or KDE's "Patak", pass: they are textured, which is what the rule is for.)
  4. Every kept picture is resized (PIL bicubic, antialiased) so that its long side is at most
     `max_side` (default 1024) and stored as an 8-bit RGB PNG in <cache>/images/<source>/; greyscale
     pictures are replicated to 3 channels. <cache>/manifest.json lists them with their statistics.

Validation split (fixed, by file): within each source, the kept pictures are grouped (variants of one
scene, e.g. a wallpaper's light and dark versions or skimage's motorcycle_left/right, share a group),
the groups are ordered by SHA-1 of "<source>/<group>", and the first max(1, round(0.2 * n_groups))
groups are validation, the rest training (a source with fewer than 3 groups is all training). Adding or removing other files can move only the boundary.

Patch sampler: picks a picture (probability proportional to sqrt(pixel count)), picks a square region
of side  patch * s  with  log s ~ U(log min_scale, log max_scale)  (clipped to the picture's short side),
crops it at a uniform random position and resizes it to patch x patch (PIL bicubic, antialiased; no
resize when the region already has the patch size). Training patches also get a random flip and a
random multiple-of-90-degree rotation. Everything is driven by a numpy Generator, so a seed fixes it.

Usage:
    /work/venv/bin/python -m training.data [--cache DIR] [--max-side 1024] [--rebuild] [--stats]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
from PIL import Image

DEBIAN_PACKAGES = (
    "plasma-workspace-wallpapers",
    "gnome-backgrounds",
    "mate-backgrounds",
    "ukui-wallpapers",
)
SKIMAGE = "skimage"
SOURCES = DEBIAN_PACKAGES + (SKIMAGE,)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")

# rule thresholds (see the module docstring)
STATS_SIDE = 512
MIN_SHORT_SIDE = 256
MAX_TRANSPARENT = 0.01
MIN_GRAD = 0.05
MIN_COLOURS = 48
MAX_FLAT_FRAC = 0.5
VAL_FRACTION = 0.2
MANIFEST_VERSION = 2

# Extra TRAINING pictures (third training run): textured photographs and renders that the whole-image
# rule above rejects only because of large flat areas (sky, mist, backdrop), looked at by hand. They are
# added to the training split only, AFTER the split is assigned, so the validation split (by file) is
# unchanged; one whose group is a validation group of its source would be left out. The crop-level texture
# rule of training/degradations.py keeps their flat parts out of the examples that need texture.
EXTRA_TRAIN = (
    ("plasma-workspace-wallpapers", "ColdRipple"),   # a pier in mist, greyscale photograph
    ("plasma-workspace-wallpapers", "Volna"),        # a beach from above, photograph
    ("plasma-workspace-wallpapers", "MilkyWay"),     # star field
    ("ukui-wallpapers", "2004default"),              # rendered silk ribbons
    ("ukui-wallpapers", "rhythm"),                   # rendered silk ribbons
    ("skimage", "brick"),                            # greyscale photograph of a brick wall
    ("skimage", "rocket"),                           # photograph of a rocket on its pad at night
)


def default_cache() -> str:
    return os.environ.get("AUTODIR_TRAIN_CACHE", os.path.expanduser("~/.cache/autodir-train"))


# ----------------------------------------------------------------------------------------------
# fetching


def fetch_debian(cache: str, log=print) -> None:
    """apt-get download + dpkg -x each package into <cache>/unpacked/<pkg> (skipped when done)."""
    debs = os.path.join(cache, "debs")
    os.makedirs(debs, exist_ok=True)
    for pkg in DEBIAN_PACKAGES:
        target = os.path.join(cache, "unpacked", pkg)
        marker = os.path.join(target, ".unpacked")
        if os.path.exists(marker):
            continue
        found = glob.glob(os.path.join(debs, f"{pkg}_*.deb"))
        if not found:
            log(f"apt-get download {pkg}")
            subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True,
                           stdout=subprocess.DEVNULL)
            found = glob.glob(os.path.join(debs, f"{pkg}_*.deb"))
            if not found:
                raise RuntimeError(f"apt-get download {pkg} produced no .deb in {debs}")
        os.makedirs(target, exist_ok=True)
        log(f"dpkg -x {os.path.basename(found[0])}")
        subprocess.run(["dpkg", "-x", sorted(found)[-1], target], check=True)
        with open(marker, "w") as f:
            f.write(os.path.basename(sorted(found)[-1]) + "\n")


def skimage_data_dir() -> str:
    import skimage.data

    return os.path.dirname(skimage.data.__file__)


# ----------------------------------------------------------------------------------------------
# candidates


@dataclass
class Candidate:
    source: str
    path: str
    name: str   # unique within the source; the cached file is <name>.png
    group: str  # variants of one scene share a group (they land in the same split)


_RES_SUFFIX = re.compile(r"_\d+x\d+$")


def _image_size(path: str) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def list_candidates(cache: str) -> list[Candidate]:
    out: list[Candidate] = []
    for pkg in DEBIAN_PACKAGES:
        root = os.path.join(cache, "unpacked", pkg)
        files = sorted(
            f for f in glob.glob(os.path.join(root, "**", "*"), recursive=True)
            if f.lower().endswith(EXTENSIONS) and not os.path.basename(f).lower().startswith("screenshot")
        )
        best: dict[str, tuple[int, str, str]] = {}
        for f in files:
            rel = os.path.relpath(f, root)
            parts = rel.split(os.sep)
            stem = os.path.splitext(parts[-1])[0]
            if pkg == "plasma-workspace-wallpapers" and "contents" in parts:
                wp = parts[parts.index("contents") - 1]
                folder = parts[parts.index("contents") + 1]
                name = wp + ("-dark" if folder == "images_dark" else "")
                group = wp
            else:
                name = _RES_SUFFIX.sub("", stem)
                group = re.sub(r"-(l|d)$", "", name) if pkg == "gnome-backgrounds" else name
            w, h = _image_size(f)
            key = name
            if key not in best or w * h > best[key][0]:
                best[key] = (w * h, f, group)
        for name in sorted(best):
            _, f, group = best[name]
            out.append(Candidate(pkg, f, name, group))
    sk = skimage_data_dir()
    for f in sorted(glob.glob(os.path.join(sk, "*"))):
        if not f.lower().endswith((".png", ".jpg", ".jpeg")):
            continue
        stem = os.path.splitext(os.path.basename(f))[0]
        group = re.sub(r"_(left|right)$", "", stem)
        out.append(Candidate(SKIMAGE, f, stem, group))
    return out


# ----------------------------------------------------------------------------------------------
# loading and the photo test


def load_rgb(path: str) -> tuple[np.ndarray, float]:
    """Returns (uint8 HxWx3, fraction of transparent pixels). Greyscale is replicated to RGB."""
    with Image.open(path) as im:
        im.load()
        transparent = 0.0
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA") if im.mode != "LA" else im
            alpha = np.asarray(im.getchannel("A"))
            transparent = float((alpha < 255).mean())
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im, dtype=np.float64)
            a = np.clip(a / (65535.0 if a.max() > 255 else 255.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            im = Image.fromarray(a, "L")
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return rgb, transparent


def resize_long_side(rgb: np.ndarray, side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    s = side / max(h, w)
    if s >= 1.0:
        return rgb
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BICUBIC), dtype=np.uint8)


def image_stats(rgb: np.ndarray) -> dict:
    from scipy import ndimage

    small = resize_long_side(rgb, STATS_SIDE).astype(np.float64) / 255.0
    y = small @ np.array([0.299, 0.587, 0.114])
    grad = float(np.hypot(ndimage.sobel(y, 0), ndimage.sobel(y, 1)).mean())
    q = (small * 63.999).astype(np.int64)
    colours = int(len(np.unique(q[..., 0] * 4096 + q[..., 1] * 64 + q[..., 2])))
    m = ndimage.uniform_filter(y, 5)
    v = np.maximum(ndimage.uniform_filter(y * y, 5) - m * m, 0.0)
    flat = float((np.sqrt(v) < 1.0 / 255.0).mean())
    return {"grad": round(grad, 4), "colours": colours, "flat_frac": round(flat, 4)}


def accept(stats: dict, size: tuple[int, int], transparent: float) -> tuple[bool, str]:
    if min(size) < MIN_SHORT_SIDE:
        return False, f"short side {min(size)} < {MIN_SHORT_SIDE}"
    if transparent > MAX_TRANSPARENT:
        return False, f"{transparent:.0%} transparent"
    if stats["grad"] < MIN_GRAD:
        return False, f"grad {stats['grad']:.3f} < {MIN_GRAD}"
    if stats["colours"] < MIN_COLOURS:
        return False, f"colours {stats['colours']} < {MIN_COLOURS}"
    if stats["flat_frac"] > MAX_FLAT_FRAC:
        return False, f"flat_frac {stats['flat_frac']:.2f} > {MAX_FLAT_FRAC}"
    return True, "ok"


def _group_hash(source: str, group: str) -> str:
    return hashlib.sha1(f"{source}/{group}".encode()).hexdigest()


def assign_splits(entries: list[dict], val_fraction: float = VAL_FRACTION) -> None:
    """Sets entry['split'] in place for the kept entries (see module docstring)."""
    for src in SOURCES:
        groups = sorted({e["group"] for e in entries if e["source"] == src and e["kept"]},
                        key=lambda g: _group_hash(src, g))
        if not groups:
            continue
        n_val = max(1, round(val_fraction * len(groups))) if len(groups) >= 3 else 0
        val = set(groups[:n_val])
        for e in entries:
            if e["source"] == src and e["kept"]:
                e["split"] = "val" if e["group"] in val else "train"


# ----------------------------------------------------------------------------------------------
# building the cache


def build(cache: str | None = None, max_side: int = 1024, rebuild: bool = False, log=print) -> dict:
    """Fetches, selects, resizes and splits; returns the manifest (cached in <cache>/manifest.json)."""
    cache = cache or default_cache()
    manifest_path = os.path.join(cache, "manifest.json")
    if not rebuild and os.path.exists(manifest_path):
        with open(manifest_path) as f:
            man = json.load(f)
        if man.get("version") == MANIFEST_VERSION and man.get("max_side") == max_side:
            if add_extras(cache, man, log):
                _write_manifest(manifest_path, man)
            return man
    fetch_debian(cache, log=log)
    entries = []
    for c in list_candidates(cache):
        rgb, transparent = load_rgb(c.path)
        h, w = rgb.shape[:2]
        st = image_stats(rgb)
        ok, why = accept(st, (w, h), transparent)
        e = {"source": c.source, "name": c.name, "group": c.group, "path": c.path,
             "orig_size": [w, h], "transparent": round(transparent, 4), **st,
             "kept": ok, "reason": why}
        if ok:
            small = resize_long_side(rgb, max_side)
            rel = os.path.join("images", c.source, c.name + ".png")
            os.makedirs(os.path.join(cache, "images", c.source), exist_ok=True)
            Image.fromarray(small).save(os.path.join(cache, rel), compress_level=1)
            e["file"] = rel
            e["size"] = [small.shape[1], small.shape[0]]
        entries.append(e)
    assign_splits(entries)
    man = {"version": MANIFEST_VERSION, "max_side": max_side, "entries": entries}
    add_extras(cache, man, log)
    _write_manifest(manifest_path, man)
    return man


def _write_manifest(path: str, man: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(man, f, indent=1)
    os.replace(tmp, path)


def add_extras(cache: str, man: dict, log=print) -> bool:
    """Adds the EXTRA_TRAIN pictures to the training split (see EXTRA_TRAIN); True if anything changed."""
    changed = False
    for src, name in EXTRA_TRAIN:
        es = [e for e in man["entries"] if e["source"] == src and e["name"] == name]
        if not es or es[0]["kept"]:
            continue
        e = es[0]
        val_groups = {x["group"] for x in man["entries"] if x["source"] == src and x.get("split") == "val"}
        if e["group"] in val_groups:
            log(f"extra {src}/{name}: its group is a validation group, left out")
            continue
        rgb, _ = load_rgb(e["path"])
        small = resize_long_side(rgb, man["max_side"])
        rel = os.path.join("images", src, name + ".png")
        os.makedirs(os.path.join(cache, "images", src), exist_ok=True)
        Image.fromarray(small).save(os.path.join(cache, rel), compress_level=1)
        e.update({"kept": True, "split": "train", "extra": True, "file": rel,
                  "size": [small.shape[1], small.shape[0]],
                  "reason": "extra training picture (EXTRA_TRAIN; whole-image rule: " + e["reason"] + ")"})
        changed = True
    return changed


def counts(man: dict) -> dict:
    out = {}
    for src in SOURCES:
        es = [e for e in man["entries"] if e["source"] == src]
        out[src] = {
            "candidates": len(es),
            "rejected": sum(not e["kept"] for e in es),
            "train": sum(e.get("split") == "train" for e in es),
            "val": sum(e.get("split") == "val" for e in es),
        }
    return out


def print_counts(man: dict, file=sys.stdout) -> None:
    c = counts(man)
    print(f"{'source':30s} {'cand':>5s} {'rej':>5s} {'train':>6s} {'val':>5s}", file=file)
    tot = {"candidates": 0, "rejected": 0, "train": 0, "val": 0}
    for src, d in c.items():
        print(f"{src:30s} {d['candidates']:5d} {d['rejected']:5d} {d['train']:6d} {d['val']:5d}", file=file)
        for k in tot:
            tot[k] += d[k]
    print(f"{'total':30s} {tot['candidates']:5d} {tot['rejected']:5d} {tot['train']:6d} {tot['val']:5d}",
          file=file)


# ----------------------------------------------------------------------------------------------
# in-memory dataset and patches


class PhotoSet:
    """The cached pictures of one split, as uint8 HxWx3 arrays, in manifest order."""

    def __init__(self, split: str, cache: str | None = None, max_side: int = 1024, log=print):
        assert split in ("train", "val")
        self.cache = cache or default_cache()
        man = build(self.cache, max_side=max_side, log=log)
        self.entries = [e for e in man["entries"] if e.get("split") == split]
        self.images = [np.asarray(Image.open(os.path.join(self.cache, e["file"])).convert("RGB"))
                       for e in self.entries]

    def __len__(self) -> int:
        return len(self.images)


class PatchSampler:
    """Multi-scale square patches, float32 HxWx3 in [0, 1] (see module docstring)."""

    def __init__(self, images: list[np.ndarray], patch: int = 64, min_scale: float = 1.0,
                 max_scale: float = 4.0, augment: bool = True):
        self.images = images
        self.patch = patch
        self.min_scale = min_scale
        self.max_scale = max_scale
        self.augment = augment
        w = np.array([np.sqrt(im.shape[0] * im.shape[1]) for im in images], dtype=np.float64)
        self.weights = w / w.sum()

    def sample(self, rng: np.random.Generator, min_texture: float = 0.0, max_tries: int = 200) -> np.ndarray:
        """One patch; with min_texture > 0 patches are drawn again (same generator) until
        degradations.texture(patch) >= min_texture (after max_tries the last one is returned)."""
        for _ in range(max_tries):
            out = self._sample(rng)
            if min_texture <= 0.0:
                return out
            from training.degradations import texture

            if texture(out) >= min_texture:
                return out
        return out

    def _sample(self, rng: np.random.Generator) -> np.ndarray:
        im = self.images[rng.choice(len(self.images), p=self.weights)]
        h, w = im.shape[:2]
        s = np.exp(rng.uniform(np.log(self.min_scale), np.log(self.max_scale)))
        side = int(round(self.patch * s))
        side = max(1, min(side, h, w))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        crop = im[y:y + side, x:x + side]
        if side != self.patch:
            crop = np.asarray(Image.fromarray(crop).resize((self.patch, self.patch), Image.BICUBIC))
        out = crop.astype(np.float32) / 255.0
        if self.augment:
            if rng.random() < 0.5:
                out = out[:, ::-1]
            out = np.rot90(out, int(rng.integers(0, 4)))
        return np.ascontiguousarray(out)

    def batch(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.stack([self.sample(rng) for _ in range(n)])


def fixed_patches(split: str = "val", n: int = 50, patch: int = 64, seed: int = 1234,
                  cache: str | None = None, min_scale: float = 1.0, max_scale: float = 4.0) -> np.ndarray:
    """A fixed, reproducible set of n patches (n, patch, patch, 3) from one split (no augmentation)."""
    ds = PhotoSet(split, cache)
    sampler = PatchSampler(ds.images, patch, min_scale, max_scale, augment=False)
    return sampler.batch(np.random.default_rng(seed), n)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=default_cache())
    ap.add_argument("--max-side", type=int, default=1024)
    ap.add_argument("--rebuild", action="store_true", help="recompute the selection and the cached PNGs")
    ap.add_argument("--stats", action="store_true", help="list every candidate with its statistics")
    a = ap.parse_args(argv)
    man = build(a.cache, a.max_side, rebuild=a.rebuild)
    if a.stats:
        for e in man["entries"]:
            print(f"{e['source'][:10]:10s} {e['name'][:34]:34s} {e['orig_size'][0]:5d}x{e['orig_size'][1]:<5d} "
                  f"grad {e['grad']:.3f} col {e['colours']:5d} flat {e['flat_frac']:.2f} "
                  f"{e.get('split', '-'):5s} {e['reason']}")
    print(f"cache: {a.cache}")
    print_counts(man)


if __name__ == "__main__":
    main()
