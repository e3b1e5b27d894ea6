"""Where the boxes of ``detgroup infer`` come from: images found on disk, keyed by their
relative file name (and a COCO image id), and the boxes, texts and attributes of each image
from a COCO file, a mapping file or a folder of per-image box files
(:mod:`detgroup.data.box_files`).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from detgroup.data.box_files import parse_box_list, read_box_file, read_csv_texts
from detgroup.data.coco_groups import CocoGroups, load_coco_groups, read_json
from detgroup.errors import DetgroupError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class InputImage:
    """One image to group: where it is, its relative file name, and its id."""

    path: Path
    name: str  # relative file name, posix separators (COCO's ``file_name``)
    image_id: int


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def list_images(spec: str | Path) -> list[tuple[Path, str]]:
    """An image file, a folder (its images, subfolders included, sorted) or a glob pattern →
    (path, name relative to the folder / the glob's common folder) of each image."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if _is_image(p))
        named = [(p, p.relative_to(path).as_posix()) for p in files]
    elif path.is_file():
        named = [(path, path.name)]
    else:
        files = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
        root = Path(os.path.commonpath([str(p.parent) for p in files])) if files else Path()
        named = [(p, p.relative_to(root).as_posix()) for p in files]
    if not named:
        raise DetgroupError(f"{spec}: no images found (give an image, a folder or a glob)")
    return named


def output_names(names: list[str]) -> list[str]:
    """Unique output names (no suffix, subfolders kept) for relative image file names.

    ``a/x.png`` → ``a/x``; names that would collide keep their suffix (``x.png``, ``x.jpg``);
    ``..`` and absolute anchors are dropped, so no output leaves its folder.
    """
    def safe(name: str) -> PurePosixPath:
        parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts
                 if p not in ("..", ".", "/")]
        return PurePosixPath(*parts) if parts else PurePosixPath("image")

    stems = [str(safe(n).with_suffix("")) for n in names]
    full = [str(safe(n)) for n in names]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    chosen = [stem if counts[stem] == 1 else f for stem, f in zip(stems, full, strict=True)]
    seen: dict[str, int] = {}
    out = []
    for k, name in enumerate(chosen):
        if name in seen or chosen.count(name) > 1:
            name = f"{name}__{k}"
        seen[name] = k
        out.append(name)
    return out


def _match_name(name: str, keys: dict[str, Any]) -> str | None:
    """The key of ``keys`` naming the same file as ``name``: equal, else the one key that is a
    whole-component suffix of ``name`` or of which ``name`` is one (``x.png`` ~ ``a/x.png``)."""
    if name in keys:
        return name
    parts = PurePosixPath(name).parts
    hits = []
    for key in keys:
        kp = PurePosixPath(key.replace("\\", "/")).parts
        short, long = (kp, parts) if len(kp) <= len(parts) else (parts, kp)
        if short and long[-len(short):] == short:
            hits.append(key)
    return hits[0] if len(hits) == 1 else None


class BoxSource:
    """Boxes [N, 4] xyxy px for each image, from a COCO file, a mapping file or a folder."""

    def __init__(self, spec: Path, *, clip: bool = False) -> None:
        self.spec = spec
        self.coco: CocoGroups | None = None
        self.mapping: dict[str, Any] | None = None
        # texts and attributes of the boxes of a COCO file, by image file name
        self.coco_extras: dict[str, tuple[list[str] | None, np.ndarray | None]] = {}
        if spec.is_dir():
            return
        data = read_json(spec)
        if isinstance(data, dict) and "images" in data and "annotations" in data:
            self.coco = load_coco_groups(spec, clip=clip)
            self.by_name = {info["file_name"]: info for info in self.coco.images}
        elif isinstance(data, dict):
            self.mapping = {str(k).replace("\\", "/"): v for k, v in data.items()}
        else:
            raise DetgroupError(
                f"{spec}: expected a COCO JSON or a mapping of image file name to boxes"
            )

    def category_ids(self, names: list[str]) -> list[int] | None:
        """COCO ids of the model's categories ``names`` in this source, or None when the
        source is not COCO or lacks one of the names."""
        if self.coco is None:
            return None
        ids = {c["name"]: int(c["id"]) for c in self.coco.categories}
        if not all(n in ids for n in names):
            return None
        return [ids[n] for n in names]

    def inputs(self, images: str) -> list[InputImage | str]:
        """The images to group (a failure message for a file the COCO source lacks).

        Every image file found (a folder: with its subfolders) is matched to the COCO image of
        the same relative ``file_name`` (else of the one ``file_name`` that ends in the file's
        path, or that the file's relative name ends in); COCO images without a file are not
        inputs.
        """
        found = list_images(images)
        if self.coco is None:
            return [InputImage(p, n, k) for k, (p, n) in enumerate(found, start=1)]
        out: list[InputImage | str] = []
        for path, name in found:
            key = _match_name(name, self.by_name) or _match_name(path.as_posix(), self.by_name)
            if key is None:
                out.append(f"{self.spec}: no image with file name {name!r} (or several whose "
                           "file_name ends in it)")
            else:
                info = self.by_name[key]
                out.append(InputImage(path, info["file_name"], int(info["id"])))
        return out

    def boxes(self, image: InputImage) -> tuple[Any, str]:
        """(raw boxes xyxy px, where they came from) for one image."""
        if self.coco is not None:
            return (self.coco.targets(image.image_id)["boxes"],
                    f"{self.spec} (image id {image.image_id}, {image.name})")
        if self.mapping is not None:
            key = _match_name(image.name, self.mapping)
            if key is None:
                raise DetgroupError(f"{self.spec}: no boxes for {image.name!r}")
            return parse_box_list(self.mapping[key], source=f"{self.spec} ({key})"), \
                f"{self.spec} ({key})"
        file = self._box_file(image)
        if file is None:
            stem = str(PurePosixPath(image.name).with_suffix(""))
            raise DetgroupError(f"{self.spec}: no {stem}.json or {stem}.csv box file")
        return read_box_file(file), str(file)

    def _box_file(self, image: InputImage) -> Path | None:
        """The per-image box file of ``image`` in the box folder (``.json`` first), or None."""
        stem = str(PurePosixPath(image.name).with_suffix(""))
        for suffix in (".json", ".csv"):
            file = self.spec / f"{stem}{suffix}"
            if file.is_file():
                return file
        return None

    def extras(self, image: InputImage, num_boxes: int) -> tuple[list[str] | None, Any]:
        """(texts or None, attributes or None) of the boxes of one image; a list whose length
        is not ``num_boxes`` is a DetgroupError naming its file."""
        if self.coco is not None:
            target = self.coco.targets(image.image_id)
            anns = self.coco.anns_by_image.get(image.image_id, [])
            return (target["texts"] if any("text" in a for a in anns) else None,
                    target["attributes"] if self.coco.attribute_names else None)
        value: Any = None
        source: Path = self.spec
        if self.mapping is not None:
            key = _match_name(image.name, self.mapping)
            value = None if key is None else self.mapping[key]
        elif (file := self._box_file(image)) is not None:
            source = file
            value = read_json(file) if file.suffix == ".json" else read_csv_texts(file)
        return _box_extras(value, source, num_boxes)

    def check_extras(self, images: list[InputImage]) -> None:
        """Check the texts / attributes of every image's boxes before anything is written (an
        image whose boxes cannot be read is left to the caller, which reports and skips it)."""
        for image in images:
            try:
                raw, _ = self.boxes(image)
            except DetgroupError:
                continue
            self.extras(image, len(raw))


def _box_extras(value: Any, source: Path, num_boxes: int) -> tuple[list[str] | None, Any]:
    """The ``texts`` and ``attributes`` lists of a per-image box record, checked."""
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = {"texts": value}  # the texts column of a CSV
    if not isinstance(value, dict):
        return None, None
    texts, attributes = value.get("texts"), value.get("attributes")
    if texts is not None:
        if not isinstance(texts, list):
            raise DetgroupError(f"{source}: 'texts' must be a list of strings")
        if len(texts) != num_boxes:
            raise DetgroupError(f"{source}: 'texts' has {len(texts)} entries for {num_boxes} "
                                "boxes (one string per box)")
        bad = [i for i, t in enumerate(texts) if t is not None and not isinstance(t, str)]
        if bad:
            raise DetgroupError(f"{source}: 'texts' entry {bad[0]} is not a string: "
                                f"{texts[bad[0]]!r}")
    if attributes is not None:
        if not isinstance(attributes, list) or len(attributes) != num_boxes:
            count = len(attributes) if isinstance(attributes, list) else "no"
            raise DetgroupError(f"{source}: 'attributes' has {count} entries for {num_boxes} "
                                "boxes (one list of numbers per box)")
    return texts, attributes
