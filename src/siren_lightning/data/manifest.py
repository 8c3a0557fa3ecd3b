"""JSONL manifests (DESIGN.md section 3) and the importers that write them.

One clip a line: {"id", "audio" (path relative to the manifest), "caption" | "captions",
"duration"?, "split"?, "attributes"?}. Importers read AudioCaps CSVs and WavCaps JSON files.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from siren_lightning.data.audio import MIN_SECONDS, AudioError, audio_info, load_audio


class ManifestError(ValueError):
    """A malformed manifest or source file; the message names the file and line."""


def check_file_ids(ids: Sequence[str], who: str) -> None:
    """Refuses clip ids that cannot be used as file names (`<out>/<id>.wav`) inside a folder.

    An id containing a path separator or starting with "." (`../../x`, `.hidden`) would write
    outside the output folder or hide the file; two equal ids would overwrite each other. Every
    writer of per-clip files (`siren generate`, `siren test`, the held-out alignment
    evaluation) calls this before any work.

    Raises:
        ManifestError: naming `who` and the first bad ids.
    """
    bad = [i for i in ids if not i or "/" in i or "\\" in i or i.startswith(".")]
    if bad or len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise ManifestError(
            f"{who}: clip ids must be unique file names (no '/' or '\\', not starting with '.'); "
            f"bad: {bad[:3] or repeated[:3]}"
        )


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 text of a source file; a byte that is not UTF-8 is named with its line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        ) from None


@dataclass
class Clip:
    """One captioned clip. `audio` is absolute once read from a manifest."""

    id: str
    audio: Path
    captions: list[str]
    duration: float | None = None
    split: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_json(self, root: Path) -> dict[str, Any]:
        """The manifest line, with `audio` relative to `root` (the manifest's folder)."""
        line: dict[str, Any] = {
            "id": self.id,
            "audio": os.path.relpath(self.audio, root),
            "captions": list(self.captions),
        }
        if self.duration is not None:
            line["duration"] = round(float(self.duration), 4)
        if self.split is not None:
            line["split"] = self.split
        if self.attributes:
            line["attributes"] = self.attributes
        return line


def _parse_line(obj: Any, root: Path, where: str) -> Clip:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("id", "audio"):
        if key not in obj:
            raise ManifestError(f"{where}: missing required key {key!r}")
        if not isinstance(obj[key], str) or not obj[key]:
            raise ManifestError(f"{where}: {key!r} must be a non-empty string")
    if "captions" in obj:
        captions = obj["captions"]
        if (
            not isinstance(captions, list)
            or not captions
            or not all(isinstance(c, str) and c.strip() for c in captions)
        ):
            raise ManifestError(f"{where}: 'captions' must be a non-empty list of strings")
    elif "caption" in obj:
        if not isinstance(obj["caption"], str) or not obj["caption"].strip():
            raise ManifestError(f"{where}: 'caption' must be a non-empty string")
        captions = [obj["caption"]]
    else:
        raise ManifestError(f"{where}: missing 'caption' or 'captions'")
    duration = obj.get("duration")
    if duration is not None and (not isinstance(duration, int | float) or duration < 0):
        raise ManifestError(f"{where}: 'duration' must be a non-negative number")
    attributes = obj.get("attributes", {})
    if not isinstance(attributes, dict):
        raise ManifestError(f"{where}: 'attributes' must be an object")
    audio = Path(obj["audio"])
    return Clip(
        id=obj["id"],
        audio=audio if audio.is_absolute() else (root / audio).resolve(),
        captions=[c.strip() for c in captions],
        duration=None if duration is None else float(duration),
        split=obj.get("split"),
        attributes=attributes,
    )


def read_manifest(path: str | Path) -> list[Clip]:
    """Reads a JSONL manifest (UTF-8); blank lines are allowed.

    Raises:
        ManifestError: naming the file and line of the first malformed, duplicate or non-UTF-8
            entry, or naming the file when it holds no clip at all.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    root = path.resolve().parent
    clips: list[Clip] = []
    seen: dict[str, int] = {}
    text = _decode(path, path.read_bytes())
    # Split on "\n" only: str.splitlines would also split inside captions holding U+2028 & co.,
    # which `write_manifest` (ensure_ascii=False) writes as they are.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{where}: invalid JSON ({exc.msg})") from None
        clip = _parse_line(obj, root, where)
        if clip.id in seen:
            raise ManifestError(
                f"{where}: duplicate id {clip.id!r} (first on line {seen[clip.id]})"
            )
        seen[clip.id] = lineno
        clips.append(clip)
    if not clips:
        # An empty manifest is always a mistake upstream (an importer that found nothing, a
        # wrong path); reading it as zero clips would only fail later, and less clearly.
        raise ManifestError(f"{path}: the manifest holds no clips")
    return clips


def write_manifest(path: str | Path, clips: Iterable[Clip]) -> int:
    """Writes clips as JSONL (atomically: a reader never sees half a manifest). Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.resolve().parent
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for clip in clips:
            f.write(json.dumps(clip.to_json(root), ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


@dataclass
class ImportReport:
    """What an importer found: kept clips and the ones it left out, with reasons.

    `unusable` (id -> reason) holds clips whose audio decodes but that every reader skips:
    empty, silent, NaN/inf samples or too short (filled by a full check only).
    """

    source: str
    found: int = 0
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    unusable: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "found": self.found,
            "missing": len(self.missing),
            "unreadable": len(self.unreadable),
            "unusable": len(self.unusable),
            "missing_ids": self.missing,
            "unreadable_ids": self.unreadable,
            "unusable_ids": self.unusable,
        }

    def summary(self) -> str:
        unusable = f", {len(self.unusable)} unusable" if self.unusable else ""
        return (
            f"{self.source}: {self.found} clips found, {len(self.missing)} missing, "
            f"{len(self.unreadable)} unreadable{unusable}"
        )


def check_audio(
    clips: Iterable[Clip],
    report: ImportReport,
    *,
    full: bool = False,
    min_seconds: float = MIN_SECONDS,
) -> list[Clip]:
    """Keeps the clips whose file exists and has a readable header; fills in durations.

    With `full`, each file is also decoded and the clips every reader would skip (empty,
    silent, NaN/inf samples, shorter than `min_seconds`) are left out too, as `unusable`.
    """
    kept = []
    for clip in clips:
        try:
            frames, sr = audio_info(clip.audio)
            if full:
                # At the file's own rate: decoded, never resampled.
                load_audio(clip.audio, sr, min_seconds=min_seconds)
        except AudioError as err:
            if err.reason == "missing file":
                report.missing.append(clip.id)
            elif err.reason.startswith("unreadable"):
                report.unreadable.append(clip.id)
            else:
                report.unusable[clip.id] = err.reason
            continue
        if clip.duration is None:
            clip.duration = frames / sr
        kept.append(clip)
    report.found = len(kept)
    return kept


AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")


def import_audiocaps(
    csv_path: str | Path,
    audio_dir: str | Path,
    *,
    audio_pattern: str = "{youtube_id}.wav",
    id_field: str = "youtube_id",
    split: str | None = None,
) -> list[Clip]:
    """Reads an AudioCaps CSV (`audiocap_id, youtube_id, start_time, caption`).

    Rows that name the same audio file are one clip with several captions (the val/test CSVs
    have five a clip). `audio_pattern` names the file from the row's columns, e.g.
    "Y{youtube_id}.wav" or "{youtube_id}_{start_time}.flac"; `id_field` picks the clip id.
    """
    csv_path = Path(csv_path)
    audio_dir = Path(audio_dir).resolve()
    if id_field not in AUDIOCAPS_COLUMNS[:3]:
        raise ValueError(f"id_field must be one of {AUDIOCAPS_COLUMNS[:3]}, got {id_field!r}")
    by_file: dict[str, Clip] = {}
    with io.StringIO(_decode(csv_path, csv_path.read_bytes()), newline="") as f:
        reader = csv.DictReader(f)
        absent = [c for c in AUDIOCAPS_COLUMNS if c not in (reader.fieldnames or [])]
        if absent:
            raise ManifestError(
                f"{csv_path}:1: missing columns {absent} (have {reader.fieldnames})"
            )
        for lineno, row in enumerate(reader, start=2):
            caption = (row["caption"] or "").strip()
            if not row["youtube_id"] or not caption:
                raise ManifestError(f"{csv_path}:{lineno}: empty youtube_id or caption")
            try:
                name = audio_pattern.format(**row)
            except KeyError as exc:
                raise ManifestError(
                    f"{csv_path}: audio_pattern uses unknown column {exc}"
                ) from None
            if name in by_file:
                by_file[name].captions.append(caption)
            else:
                by_file[name] = Clip(
                    id=row[id_field], audio=audio_dir / name, captions=[caption], split=split
                )
    return list(by_file.values())


def import_wavcaps(
    json_path: str | Path,
    audio_dir: str | Path,
    *,
    audio_pattern: str = "{basename}",
    default_extension: str = ".flac",
    split: str | None = None,
) -> list[Clip]:
    """Reads a WavCaps subset JSON (`{"data": [{"id", "caption", "audio"|"wav_path", "duration"}]}`).

    The JSON's paths point at the authors' machines, so only their basename is kept
    (`{basename}`; `{id}{default_extension}` when an entry has no path) and joined to `audio_dir`.
    """
    json_path = Path(json_path)
    audio_dir = Path(audio_dir).resolve()
    try:
        doc = json.loads(_decode(json_path, json_path.read_bytes()))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{json_path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ManifestError(f"{json_path}: expected an object with a 'data' list")
    clips = []
    for i, entry in enumerate(doc["data"]):
        where = f"{json_path}: data[{i}]"
        if not isinstance(entry, dict) or "id" not in entry or "caption" not in entry:
            raise ManifestError(f"{where}: each entry needs 'id' and 'caption'")
        clip_id = str(entry["id"])
        source = entry.get("audio") or entry.get("wav_path")
        basename = Path(source).name if source else f"{Path(clip_id).stem}{default_extension}"
        name = audio_pattern.format(id=clip_id, basename=basename)
        duration = entry.get("duration")
        clips.append(
            Clip(
                id=clip_id,
                audio=audio_dir / name,
                captions=[str(entry["caption"]).strip()],
                duration=float(duration) if duration is not None else None,
                split=split,
            )
        )
    return clips
