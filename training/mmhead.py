"""Loader for corpora in MMHead's layout (the real MMHead release or ``mm2face-data synth`` output).

    DIR/talking_subset.json     {"train": [ids], "val": [...], "test": [...]}
                                (or a list of {"id": ..., "split": ...} records)
    DIR/t2m_subset.json
    DIR/audio/<ID>.wav          or DIR/audio.zip with <ID>.wav members (any folder inside the zip)
    DIR/facial_motion/<ID>.pkl  or DIR/facial_motion.zip; pickle dict with
                                expcodes (T, 50) and posecodes (T, 6) = head 0:3 + jaw 3:6
    DIR/text_annotations/{action,emotion,detail_expression,detail_head_pose,emotion_scenario}/<ID>.txt
    DIR/synth_meta/<ID>.json    optional ground truth of synthetic clips

    corpus = MMHeadCorpus("data/synth", splits=("train",))
    clip = corpus[0]            # Clip(id, subset, split, motion (T,56) f32 @25 fps, audio_16k, captions, meta)

Audio is read by :func:`mm2face.engine.audio.load_audio_16k` (any rate and channel count -> mono 16 kHz).
If motion and audio lengths disagree, both are trimmed to the shorter (frames vs. audio seconds * 25)
and a note is added to ``clip.meta["notes"]``.

Clips whose files are missing or malformed are skipped at load time; each problem is recorded in
``corpus.errors`` as a string naming the file (or raised at once with ``strict=True``). The clip list is
validated lazily: ``__init__`` only reads the split files and indexes what exists; a clip that fails
later when read raises :class:`CorpusError` from ``get``/``__getitem__`` and is skipped by ``clips()``.
"""
from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from mm2face.engine.audio import AudioFileError, load_audio_16k
from mm2face.engine.frame import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, MotionError, from_mmhead, validate_motion

CAPTION_KINDS = ("action", "emotion", "detail_expression", "detail_head_pose", "emotion_scenario")
SUBSET_FILES = {"talking": "talking_subset.json", "t2m": "t2m_subset.json"}
SPLITS = ("train", "val", "test")


class CorpusError(RuntimeError):
    """A clip or corpus file cannot be read; the message names the file and what to do."""


@dataclass
class Clip:
    id: str
    subset: str                  # "talking" | "t2m"
    split: str                   # "train" | "val" | "test"
    motion: np.ndarray           # (T, 56) float32, 25 fps
    audio_16k: np.ndarray | None  # (samples,) float32 in [-1, 1], 16 kHz; None for t2m clips
    captions: dict[str, str]     # keys: action, emotion, detail_expression, detail_head_pose, emotion_scenario
    meta: dict = field(default_factory=dict)   # synth_meta json if present, else {}

    @property
    def duration_s(self) -> float:
        return len(self.motion) / FPS


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class _Members:
    """Files of one kind (e.g. audio) found either in a folder or in a zip archive, by clip id."""

    def __init__(self, root: Path, folder: str, suffix: str | tuple[str, ...]):
        suffixes = (suffix,) if isinstance(suffix, str) else tuple(suffix)
        self.suffix = suffixes[0]
        self.paths: dict[str, str] = {}
        self.zip_path: Path | None = None
        self._zip: zipfile.ZipFile | None = None
        d = root / folder
        if d.is_dir():
            for sfx in reversed(suffixes):           # the first suffix wins when a clip has several
                for p in d.rglob(f"*{sfx}"):
                    self.paths[p.stem] = str(p)
        z = root / f"{folder}.zip"
        if z.is_file():
            self.zip_path = z
            try:
                with zipfile.ZipFile(z) as zf:
                    for name in zf.namelist():
                        if name.endswith(suffixes) and not name.endswith("/"):
                            cid = Path(name).stem
                            self.paths.setdefault(cid, f"zip:{name}")
            except zipfile.BadZipFile as e:
                raise CorpusError(f"{z}: not a readable zip archive ({e}); re-download or unzip it") from None

    def __contains__(self, cid: str) -> bool:
        return cid in self.paths

    def where(self, cid: str) -> str:
        p = self.paths[cid]
        return f"{self.zip_path}:{p[4:]}" if p.startswith("zip:") else p

    def read(self, cid: str) -> bytes:
        p = self.paths[cid]
        if p.startswith("zip:"):
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.zip_path)
            return self._zip.read(p[4:])
        return Path(p).read_bytes()

    def __getstate__(self):  # zip handles do not pickle (DataLoader workers): reopen lazily
        s = dict(self.__dict__)
        s["_zip"] = None
        return s


def read_motion_pkl(data: bytes, name: str) -> np.ndarray:
    """MMHead motion pickle bytes -> (T, 56) float32 frames."""
    try:
        d = pickle.loads(data)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a broken file
        raise CorpusError(f"{name}: cannot unpickle ({type(e).__name__}: {e}); the file is damaged") from None
    if not isinstance(d, dict) or "expcodes" not in d or "posecodes" not in d:
        keys = list(d.keys()) if isinstance(d, dict) else type(d).__name__
        raise CorpusError(f"{name}: expected a dict with 'expcodes' (T,50) and 'posecodes' (T,6), got {keys}")
    try:
        exp, pose = (np.asarray(d[k].detach().cpu() if hasattr(d[k], "detach") else d[k], dtype=np.float32)
                     for k in ("expcodes", "posecodes"))
        return validate_motion(from_mmhead(exp, pose), name=name, check_ranges=False)
    except (MotionError, ValueError, TypeError) as e:
        raise CorpusError(f"{name}: {e}") from None


def read_split_file(path: Path) -> dict[str, str]:
    """Split file -> {id: split}. Accepts {"train": [...], ...} or [{"id":..., "split":...}, ...]."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CorpusError(f"{path}: cannot read split file ({e})") from None
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for split, ids in obj.items():
            if not isinstance(ids, list):
                raise CorpusError(f"{path}: value of {split!r} should be a list of ids")
            for cid in ids:
                out[str(cid)] = split
    elif isinstance(obj, list):
        for rec in obj:
            if not isinstance(rec, dict) or "id" not in rec:
                raise CorpusError(f"{path}: list entries must be {{'id': ..., 'split': ...}}, got {rec!r:.80}")
            out[str(rec["id"])] = str(rec.get("split", "train"))
    else:
        raise CorpusError(f"{path}: expected a dict of split -> ids or a list of records")
    return out


class MMHeadCorpus:
    """Index over an MMHead-layout folder; clips are read on access."""

    def __init__(self, root, subsets=("talking", "t2m"), splits=None, strict: bool = False):
        self.root = Path(root)
        self.strict = strict
        self.errors: list[str] = []
        if not self.root.is_dir():
            raise CorpusError(f"corpus folder {self.root} does not exist; create one with `mm2face-data synth`")
        for s in subsets:
            if s not in SUBSET_FILES:
                raise ValueError(f"unknown subset {s!r}; use 'talking' and/or 't2m'")
        self.subsets = tuple(subsets)
        self.splits = tuple(splits) if splits is not None else None
        # WAV as MMHead ships it; FLAC / Ogg (Vorbis, Opus) read the same way, for corpora compressed on disk
        self.audio = self._members("audio", AUDIO_SUFFIXES)
        self.motion = self._members("facial_motion", ".pkl")
        self._index: list[tuple[str, str, str]] = []          # (id, subset, split)
        found_any = False
        for subset in self.subsets:
            f = self.root / SUBSET_FILES[subset]
            if not f.is_file():
                continue
            found_any = True
            try:
                table = read_split_file(f)
            except CorpusError as e:
                self._error(str(e))
                continue
            for cid, split in table.items():
                if self.splits is not None and split not in self.splits:
                    continue
                if cid not in self.motion:
                    self._error(f"{self.root / 'facial_motion' / (cid + '.pkl')}: missing motion file for "
                                f"{cid} (listed in {f.name}); clip skipped")
                    continue
                if subset == "talking" and cid not in self.audio:
                    self._error(f"{self.root / 'audio' / (cid + '.wav')}: missing audio file for talking clip "
                                f"{cid}; clip skipped")
                    continue
                self._index.append((cid, subset, split))
        if not found_any:
            raise CorpusError(f"{self.root}: no {' or '.join(SUBSET_FILES[s] for s in self.subsets)} found; "
                              "is this an MMHead-layout folder?")
        self._pos = {cid: i for i, (cid, _, _) in enumerate(self._index)}

    def _members(self, folder: str, suffix) -> _Members:
        try:
            return _Members(self.root, folder, suffix)
        except CorpusError as e:
            if self.strict:
                raise
            self.errors.append(str(e))
            return _Members(self.root / "__none__", folder, suffix)

    def _error(self, msg: str) -> None:
        if self.strict:
            raise CorpusError(msg)
        self.errors.append(msg)

    # ------------------------------------------------------------------------------ queries
    def ids(self, split: str | None = None, subset: str | None = None) -> list[str]:
        return [cid for cid, su, sp in self._index if (split is None or sp == split)
                and (subset is None or su == subset)]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> Clip:
        return self._load(*self._index[i])

    def get(self, cid: str) -> Clip:
        if cid not in self._pos:
            raise KeyError(f"clip {cid!r} is not in {self.root} (subsets {self.subsets}, splits {self.splits})")
        return self._load(*self._index[self._pos[cid]])

    def clips(self, split: str | None = None, subset: str | None = None) -> Iterator[Clip]:
        """Yield readable clips; unreadable ones are recorded in ``errors`` and skipped (unless strict)."""
        for cid, su, sp in self._index:
            if (split is None or sp == split) and (subset is None or su == subset):
                try:
                    yield self._load(cid, su, sp)
                except CorpusError as e:
                    if self.strict:
                        raise
                    self.errors.append(str(e))

    # ------------------------------------------------------------------------------ reading
    def _load(self, cid: str, subset: str, split: str) -> Clip:
        motion = read_motion_pkl(self.motion.read(cid), self.motion.where(cid))
        notes = []
        audio = None
        if subset == "talking" or cid in self.audio:
            if cid in self.audio:
                try:
                    audio = load_audio_16k(self.audio.read(cid), self.audio.where(cid))
                except AudioFileError as e:
                    raise CorpusError(str(e)) from None
                n_audio_frames = int(len(audio) // SAMPLES_PER_FRAME)
                if n_audio_frames != len(motion):
                    n = min(n_audio_frames, len(motion))
                    notes.append(f"motion has {len(motion)} frames, audio {len(audio) / SAMPLE_RATE:.3f} s "
                                 f"({n_audio_frames} frames): both trimmed to {n} frames")
                    motion = motion[:n]
                    audio = audio[:n * SAMPLES_PER_FRAME]
        captions = {}
        for kind in CAPTION_KINDS:
            p = self.root / "text_annotations" / kind / f"{cid}.txt"
            if p.is_file():
                try:
                    captions[kind] = p.read_text(encoding="utf-8").strip()
                except (OSError, UnicodeDecodeError) as e:
                    self._error(f"{p}: unreadable caption ({e}); left out")
        meta = {}
        mp = self.root / "synth_meta" / f"{cid}.json"
        if mp.is_file():
            try:
                meta = json.loads(mp.read_text())
            except (OSError, json.JSONDecodeError) as e:
                self._error(f"{mp}: unreadable meta json ({e}); left out")
        if notes:
            meta = {**meta, "notes": meta.get("notes", []) + notes}
        return Clip(id=cid, subset=subset, split=split, motion=motion, audio_16k=audio, captions=captions, meta=meta)

    def summary(self) -> dict:
        """Counts per subset/split and total hours (reads the motion files)."""
        out: dict = {"root": str(self.root), "clips": len(self)}
        hours: dict[str, float] = {}
        for clip in self.clips():
            key = f"{clip.subset}/{clip.split}"
            out[key] = out.get(key, 0) + 1
            hours[clip.subset] = hours.get(clip.subset, 0.0) + clip.duration_s / 3600
        out["hours"] = {k: round(v, 4) for k, v in hours.items()}
        out["errors"] = len(self.errors)
        return out


def subset_corpus(src, dst, split: str = "test", talking: int = 64, t2m: int = 16, as_split: str | None = None,
                  overwrite: bool = False) -> dict:
    """Make ``dst`` an MMHead-layout folder whose ``as_split`` (default ``split``) lists only the first
    ``talking`` talking and ``t2m`` text-to-motion clips of ``src``'s ``split`` (in the split files'
    order); the other splits keep their clips (the evaluator's mean-frame baseline reads the train split),
    except that the chosen clips leave ``split`` when they are listed under another name. Clip folders
    (and the synthetic corpus's ``synth_meta``) are symbolic links to ``src``'s, so nothing is copied.
    Returns the counts and ids."""
    src, dst = Path(src).resolve(), Path(dst)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    as_split = as_split or split
    if as_split not in SPLITS:
        raise ValueError(f"unknown split name {as_split!r} for --as; use one of {', '.join(SPLITS)}")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise CorpusError(f"{dst} exists and is not empty; pass overwrite=True (--overwrite) to replace its split files")
    wanted = {"talking": talking, "t2m": t2m}
    dst.mkdir(parents=True, exist_ok=True)
    out = {"source": str(src), "split": split, "listed_as": as_split}
    for subset, n in wanted.items():
        f = src / SUBSET_FILES[subset]
        if not f.is_file():
            if n > 0:
                raise CorpusError(f"{f}: missing; {src} has no {subset} subset to take {n} clips from")
            continue
        table = read_split_file(f)
        ids = [cid for cid, sp in table.items() if sp == split][:max(n, 0)]
        if len(ids) < n:
            raise CorpusError(f"{f}: the {split} split has only {len(ids)} {subset} clips, {n} asked for")
        chosen = set(ids)
        lists = {s: [cid for cid, sp in table.items() if sp == s and s != as_split and cid not in chosen] for s in SPLITS}
        lists[as_split] = ids
        (dst / SUBSET_FILES[subset]).write_text(json.dumps(lists, indent=1))
        out[subset] = len(ids)
        out[f"{subset}_ids"] = ids
    for name in ("audio", "facial_motion", "text_annotations", "audio.zip", "facial_motion.zip", "synth_meta"):
        link, target = dst / name, src / name
        if target.exists() and not link.exists():
            link.symlink_to(target, target_is_directory=target.is_dir())
    return out

