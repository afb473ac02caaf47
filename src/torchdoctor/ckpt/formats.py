"""What a checkpoint path holds, judged by its bytes (magic numbers, structure), never by its name."""

from __future__ import annotations

import enum
import io
import json
import os
import pickletools
import struct
import tarfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchdoctor.ckpt.pickle_safe import BoundedReader, load_data_pickle
from torchdoctor.errors import InputError

HEAD_BYTES = 64 << 10
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001
MAX_SAFETENSORS_HEADER = 100 << 20  # the limit the safetensors library enforces
MAX_JSON_BYTES = 64 << 20
MAX_INT64 = 2**63 - 1
LFS_PREFIX = b"version https://git-lfs.github.com/spec/v1"
TAR_MEMBERS = {"storages", "tensors", "pickle"}

# Magic numbers of things people mistake for checkpoints, to say what the file is instead.
_OTHER_MAGIC = (
    (b"\x1f\x8b", "gzip-compressed data (decompress it first?)"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras / TensorFlow weights?)"),
    (b"GGUF", "a GGUF file (llama.cpp)"),
    (b"BZh", "bzip2-compressed data"),
    (b"\xfd7zXZ", "xz-compressed data"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
)


class Format(str, enum.Enum):
    """Every kind of file ``detect_format`` tells apart; the first eight are checkpoints."""

    ZIP = "zip"
    TORCHSCRIPT = "torchscript"
    LEGACY = "legacy"
    LEGACY_TAR = "legacy-tar"
    SAFETENSORS = "safetensors"
    HF_SHARDED = "hf-sharded"
    DCP = "dcp"
    PICKLE = "pickle"
    LFS_POINTER = "lfs-pointer"
    TEXT = "text"
    EMPTY = "empty"
    UNKNOWN = "unknown"

    @property
    def is_checkpoint(self) -> bool:
        return self not in (Format.LFS_POINTER, Format.TEXT, Format.EMPTY, Format.UNKNOWN)


@dataclass(frozen=True)
class Detection:
    """What ``detect_format`` found: the format, one sentence why, facts, and what is broken if anything."""

    format: Format
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)
    corrupt: str | None = None
    """One sentence saying what is damaged (the format is still what the file was recognised as)."""


def detect_format(path: str | os.PathLike[str]) -> Detection:
    """Look at the bytes (or directory entries) of ``path`` and say what kind of file it is."""
    target = Path(path)
    if target.is_dir():
        return _detect_directory(target)
    head, size = _read_head(target)
    for probe in _FILE_PROBES:
        found = probe(target, head, size)
        if found is not None:
            return found
    return _unknown(head)


def _read_head(path: Path) -> tuple[bytes, int]:
    try:
        with path.open("rb") as f:
            return f.read(HEAD_BYTES), os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise InputError(f"{path}: no such file or directory") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror or e})") from None


def _probe_empty(path: Path, head: bytes, size: int) -> Detection | None:
    if size == 0:
        return Detection(Format.EMPTY, "The file is empty (0 bytes): the save or the download never wrote it.")
    return None


def _probe_zip(path: Path, head: bytes, size: int) -> Detection | None:
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error,
            NotImplementedError) as e:  # NotImplementedError: a "version needed to extract" zipfile lacks
        return _broken_zip(path, head, size, e)
    return _judge_zip_names(names, size)


def _broken_zip(path: Path, head: bytes, size: int, error: Exception) -> Detection:
    with path.open("rb") as f:
        f.seek(max(0, size - (HEAD_BYTES + 22)))
        tail = f.read()
    if b"PK\x05\x06" not in tail:
        problem = f"zip central directory missing: file truncated? ({size} bytes, no end-of-archive record)"
    else:
        problem = f"zip central directory is damaged ({size} bytes): {error}"
    # torch.save writes data.pkl first and torch.jit.save writes data/ first, so the first local
    # header tells the two apart even when the central directory is gone.
    first = _first_local_name(head)
    fmt = Format.ZIP if first.endswith("data.pkl") or not first else Format.TORCHSCRIPT
    return Detection(fmt, f"A zip archive (first record {first or '?'!r}) that cannot be opened.",
                     {"first_record": first, "size": size}, corrupt=problem)


def _first_local_name(head: bytes) -> str:
    if len(head) < 30 or not head.startswith(b"PK\x03\x04"):
        return ""
    name_len = struct.unpack_from("<H", head, 26)[0]
    return head[30:30 + name_len].decode("utf-8", "replace")


def _judge_zip_names(names: list[str], size: int) -> Detection:
    prefix = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
    inner = {name[len(prefix):] for name in names if name.startswith(prefix)}
    details = {"archive": prefix.rstrip("/"), "records": len(names), "size": size,
               "data_records": sum(1 for name in inner if name.startswith("data/"))}
    if "data.pkl" not in inner and "model.json" in inner:
        return Detection(Format.TORCHSCRIPT, "A TorchScript archive of PyTorch 1.0-1.2 (torch.jit.save): model.json "
                         "lists the tensors, tensors/ holds their bytes.", {**details, "layout": "model.json"})
    if "data.pkl" not in inner:
        return Detection(Format.UNKNOWN, "A zip archive that is not a torch checkpoint (it has no data.pkl record).",
                         details)
    if "bytecode.pkl" in inner:
        return Detection(Format.TORCHSCRIPT, "A TorchScript lite-interpreter archive (_save_for_lite_interpreter, "
                         "PyTorch Mobile): bytecode.pkl beside data.pkl and constants.", {**details, "layout": "lite"})
    if "constants.pkl" in inner or any(name.startswith("code/") for name in inner):
        return Detection(Format.TORCHSCRIPT, "A TorchScript archive (torch.jit.save): a zip with code/ and "
                         "constants.pkl records.", details)
    return Detection(Format.ZIP, "A torch.save zip checkpoint (torch >= 1.6): data.pkl plus one record per "
                     "storage.", details)


def _probe_legacy(path: Path, head: bytes, size: int) -> Detection | None:
    if not head.startswith(b"\x80") or _first_pickle(head) != LEGACY_MAGIC:
        return None
    details: dict[str, Any] = {"size": size}
    with path.open("rb") as f:
        problem = _check_legacy_stream(BoundedReader(f, size), details)
    return Detection(Format.LEGACY, "A legacy torch.save checkpoint (before torch 1.6, or saved with "
                     "_use_new_zipfile_serialization=False): a pickle stream after the magic number.",
                     details, corrupt=problem)


def _first_pickle(head: bytes) -> Any:
    try:
        return load_data_pickle(BoundedReader(io.BytesIO(head), len(head)))
    except Exception:  # any garbage here just means "not this format"
        return None


def _check_legacy_stream(reader: BoundedReader, details: dict[str, Any]) -> str | None:
    """Walk magic, protocol, sys_info, main pickle and storage keys; None when all are there."""
    steps: tuple[tuple[str, Callable[[], Any]], ...] = (
        ("magic number", lambda: load_data_pickle(reader)),
        ("protocol version", lambda: load_data_pickle(reader)),
        ("sys_info", lambda: load_data_pickle(reader)),
        ("main pickle", lambda: _skip_pickle(reader)),
        ("storage key list", lambda: load_data_pickle(reader)),
    )
    values = {}
    for name, step in steps:
        try:
            values[name] = step()
        except Exception as e:  # what failed is the answer; the exception type does not matter
            return f"legacy stream ends early or is damaged in its {name} (at byte {reader.tell()}): {_short(e)}"
    details.update(protocol_version=values["protocol version"], sys_info=values["sys_info"])
    keys = values["storage key list"]
    if not isinstance(keys, list):
        return "legacy stream is damaged: its storage key list is not a list"
    if reader.remaining() < 8 * len(keys):
        return f"legacy stream ends early: {len(keys)} storages need more than the {reader.remaining()} bytes left"
    details["storages"] = len(keys)
    return None


def _skip_pickle(reader: BoundedReader) -> None:
    for opcode, _arg, _pos in pickletools.genops(reader):
        if opcode.name == "STOP":
            return


def _probe_flatbuffer(path: Path, head: bytes, size: int) -> Detection | None:
    # _save_for_lite_interpreter(..., _use_flatbuffer=True): a flatbuffer whose file identifier
    # (mobile_bytecode.fbs) sits at bytes 4-8
    if head[4:8] != b"PTMF":
        return None
    return Detection(Format.TORCHSCRIPT, "A PyTorch Mobile flatbuffer model (_save_for_lite_interpreter with "
                     "_use_flatbuffer=True): the PTMF file identifier.", {"layout": "flatbuffer", "size": size})


def _probe_pickle(path: Path, head: bytes, size: int) -> Detection | None:
    if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:
        return None
    return Detection(Format.PICKLE, f"A plain pickle stream (protocol {head[1]}), not torch.save's zip or "
                     "legacy layout.", {"protocol": head[1], "size": size})


def _probe_tar(path: Path, head: bytes, size: int) -> Detection | None:
    if len(head) < 263 or head[257:262] != b"ustar":
        return None
    try:
        with tarfile.open(path, "r:") as tar:
            names = set(tar.getnames())
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        return Detection(Format.UNKNOWN, "A tar archive that cannot be listed.", {"size": size},
                         corrupt=f"tar archive is damaged: {_short(e)}")
    if TAR_MEMBERS <= names:
        return Detection(Format.LEGACY_TAR, "A very old torch.save checkpoint (torch < 0.4): a tar archive with "
                         "storages, tensors and pickle members.", {"members": sorted(names), "size": size})
    return Detection(Format.UNKNOWN, "A tar archive, not a torch checkpoint.", {"members": sorted(names)[:20]})


def _probe_safetensors(path: Path, head: bytes, size: int) -> Detection | None:
    if len(head) < 9 or head[8:9] != b"{":
        return None
    header_len = struct.unpack_from("<Q", head)[0]
    if not 2 <= header_len <= MAX_SAFETENSORS_HEADER:
        return None
    reason = "A safetensors file: an 8-byte header length, a JSON header, then raw tensor bytes."
    details: dict[str, Any] = {"header_bytes": header_len, "size": size}
    try:
        _, header = read_safetensors_header(path, size)
    except SafetensorsError as e:
        return Detection(Format.SAFETENSORS, reason, details, corrupt=str(e))
    details.update(tensors=sum(1 for key in header if key != "__metadata__"),
                   metadata=header.get("__metadata__") or {})
    return Detection(Format.SAFETENSORS, reason, details)


class SafetensorsError(ValueError):
    """A safetensors header that is cut short, not JSON, or inconsistent with the file's size."""


def read_safetensors_header(path: Path, size: int) -> tuple[int, dict[str, Any]]:
    """Header length and parsed JSON header, checked: every entry in bounds of a file of ``size`` bytes."""
    with path.open("rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        if 8 + header_len > size:
            raise SafetensorsError(f"safetensors header length {header_len} points past the end of the file "
                                   f"({size} bytes): file truncated?")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SafetensorsError(f"safetensors header is not valid JSON: {_short(e)}") from None
    if not isinstance(header, dict):
        raise SafetensorsError("safetensors header is not a JSON object")
    need = max((_safetensors_end(name, entry) for name, entry in header.items() if name != "__metadata__"),
               default=0)
    if 8 + header_len + need > size:
        raise SafetensorsError(f"safetensors data ends early: tensors need {need} bytes after the header, the file "
                               f"has {size - 8 - header_len}: file truncated?")
    return header_len, header


def _safetensors_end(name: str, entry: Any) -> int:
    ok = isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and isinstance(entry.get("shape"), list)
    offsets = entry.get("data_offsets") if ok else None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(v) is int for v in offsets)
            and 0 <= offsets[0] <= offsets[1] <= MAX_INT64 and len(entry["shape"]) <= 64
            and all(type(d) is int and 0 <= d <= MAX_INT64 for d in entry["shape"])):
        raise SafetensorsError(f"safetensors header entry {name!r} lacks a dtype, shape or valid data_offsets")
    return offsets[1]


def _probe_text(path: Path, head: bytes, size: int) -> Detection | None:
    text = _as_text(head)
    if text is None:
        return None
    if head.startswith(LFS_PREFIX):
        return _lfs_pointer(text, size)
    stripped = text.lstrip().lower()
    if stripped.startswith(("{", "[")):
        index = _hf_index_detection(path, size)
        if index is not None:
            return index
        return _text(size, "a JSON document", text)
    if stripped.startswith(("<!doctype html", "<html")) or "<html" in stripped[:2048]:
        return _text(size, "an HTML page", text, title=_html_title(text))
    if stripped.startswith("<?xml"):
        return _text(size, "an XML document", text)
    if _looks_like_python(path, text):
        return _text(size, "Python source code", text)
    return _text(size, "UTF-8 text", text)


def _looks_like_python(path: Path, text: str) -> bool:
    """A .py file, a python shebang, or lines that only Python source starts with."""
    if path.suffix in (".py", ".pyw", ".pyi") or text.startswith("#!") and "python" in text.split("\n", 1)[0]:
        return True
    starts = ("import ", "from ", "def ", "class ", "if __name__")
    lines = [line for line in text.splitlines()[:200] if line.strip() and not line.startswith("#")]
    return sum(line.startswith(starts) for line in lines) >= 2


def _as_text(head: bytes) -> str | None:
    if b"\x00" in head:
        return None
    for cut in range(4):  # the head may end inside a multi-byte character
        try:
            return head[:len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def _lfs_pointer(text: str, size: int) -> Detection:
    fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    pointed = fields.get("size", "").strip()
    details = {"oid": fields.get("oid", "").strip(), "size": int(pointed) if pointed.isdigit() else None}
    return Detection(Format.LFS_POINTER, f"A git-lfs pointer file ({size} bytes of text) to an object of "
                     f"{details['size'] or '?'} bytes, not the checkpoint itself.", details)


def _text(size: int, looks_like: str, text: str, title: str | None = None) -> Detection:
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    details = {"looks_like": looks_like, "first_line": first[:120], "size": size}
    if title:
        details["title"] = title
    return Detection(Format.TEXT, f"The file is {looks_like} ({size} bytes), not a checkpoint.", details)


def _html_title(text: str) -> str | None:
    lowered = text.lower()
    start, end = lowered.find("<title>"), lowered.find("</title>")
    return text[start + 7:end].strip()[:120] if 0 <= start < end else None


def _unknown(head: bytes) -> Detection:
    what = next((name for magic, name in _OTHER_MAGIC if head.startswith(magic)), None)
    reason = f"The file is {what}, not a checkpoint." if what else "Unrecognised binary data, not a checkpoint."
    return Detection(Format.UNKNOWN, reason, {"first_bytes": head[:16].hex(), "looks_like": what})


_FILE_PROBES = (_probe_empty, _probe_zip, _probe_legacy, _probe_pickle, _probe_tar, _probe_safetensors,
                _probe_flatbuffer, _probe_text)


def read_hf_index(path: Path) -> dict[str, Any]:
    """A ``*.index.json``, whose ``weight_map`` maps tensor names to shard files; ValueError when it has none."""
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"{path.name} is larger than {MAX_JSON_BYTES >> 20} MiB")
    index = json.loads(path.read_bytes())
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{path.name} has no weight_map of tensor names to shard files")
    return index


def _hf_index_detection(index: Path, size: int) -> Detection | None:
    if size > MAX_JSON_BYTES:
        return None
    try:
        weight_map = read_hf_index(index)["weight_map"]
    except (ValueError, RecursionError, OSError):
        return None
    shards = sorted(set(weight_map.values()))
    missing = [name for name in shards if not (index.parent / name).is_file()]
    # missing shards and git-lfs pointers are findings of their own (shard-missing, lfs-pointer): the
    # shards that are there are still read
    details = {"index": index.name, "shards": shards, "tensors": len(weight_map), "missing_shards": missing,
               "pointer_shards": _pointer_shards(index.parent, [name for name in shards if name not in missing])}
    return Detection(Format.HF_SHARDED, f"A sharded Hugging Face checkpoint: {index.name} maps {len(weight_map)} "
                     f"tensors to {len(shards)} shard files.", details)


def _pointer_shards(folder: Path, names: list[str]) -> dict[str, int | None]:
    """Shard name → the size its git-lfs pointer stands for, for each shard that is a pointer file."""
    pointers = {}
    for name in names:
        with (folder / name).open("rb") as f:
            head = f.read(len(LFS_PREFIX))
            if head == LFS_PREFIX:
                f.seek(0)
                pointers[name] = _lfs_pointer(_as_text(f.read(1024)) or "", 0).details["size"]
    return pointers


def _detect_directory(directory: Path) -> Detection:
    metadata = directory / ".metadata"
    if metadata.is_file():
        files = sorted(p.name for p in directory.glob("*.distcp"))
        problem = ".metadata is empty" if metadata.stat().st_size == 0 else None
        return Detection(Format.DCP, "A torch.distributed.checkpoint directory: a .metadata file plus "
                         f"{len(files)} .distcp data files.", {"metadata": ".metadata", "data_files": files},
                         corrupt=problem)
    # prefer safetensors shards when a repository has both index files
    for index in sorted(directory.glob("*.index.json"), key=lambda p: ("safetensors" not in p.name, p.name)):
        found = _hf_index_detection(index, index.stat().st_size)
        if found is not None:
            return found
    found = sorted(p.name for p in directory.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    listed = f": it holds {', '.join(found[:6])}{', ...' if len(found) > 6 else ''}" if found else ""
    raise InputError(f"{directory} is a directory without a .metadata file (torch.distributed.checkpoint), a "
                     "*.index.json with a weight_map (sharded Hugging Face checkpoint) or one weights file"
                     f"{listed}", hint="pass the checkpoint file itself")


# save_pretrained's single-file names (transformers, diffusers, peft), in the order they are preferred: a folder
# that holds one of them is that checkpoint, as from_pretrained reads it; safetensors first, as transformers does
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "diffusion_pytorch_model.safetensors",
                   "diffusion_pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".tar"}


def checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """``path``, or the one weights file a folder holds when it is not a checkpoint folder itself.

    A ``save_pretrained`` folder (and accelerate's ``save_state`` folder, whose model is ``model.safetensors``)
    is what people pass; a folder with a single ``*.pt``/``*.ckpt``/... file (Lightning's ``checkpoints/``)
    names it too. Folders with a ``.metadata`` or an index stay folders (dcp, hf-sharded).
    """
    target = Path(path)
    if not target.is_dir() or (target / ".metadata").is_file() or any(target.glob("*.index.json")):
        return target
    for name in HF_WEIGHT_FILES:
        if (target / name).is_file():
            return target / name
    found = [p for p in target.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file()]
    return found[0] if len(found) == 1 else target


def _short(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:200]
