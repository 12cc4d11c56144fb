"""Read a CTranslate2 `model.bin` into named torch tensors, without CTranslate2.

The only Whisper weights that install offline are in CTranslate2's format (see
docs: offline models), and CTranslate2 can run them but not hand them back. Its
file is simple, so it is read here directly (little-endian throughout):

    u32 binary version | string spec name | u32 spec revision
    u32 count, then per variable:
        string name | u8 rank | u32 x rank shape | u8 dtype id | u32 byte count | bytes
    u32 count, then per alias: string alias | string target

A string is a u16 length (counting a trailing NUL), the UTF-8 bytes, and the NUL.
Quantized weights come with a `<name>_scale` sibling; they are dequantized here
so callers only ever see floating-point tensors.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional

import torch

from whisperlivekit.errors import ModelLoadError

# The formats this reader was checked against; older CTranslate2 files may lay
# variables out differently, so they fail loudly rather than convert wrongly.
SUPPORTED_BINARY_VERSIONS = (6,)

# Order of CTranslate2's DataType enum (include/ctranslate2/types.h).
_DTYPES: Dict[int, torch.dtype] = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}


@dataclass
class CTranslate2Model:
    """A model.bin's header and its variables, aliases resolved and weights dequantized."""

    spec_name: str
    spec_revision: int
    binary_version: int
    variables: Dict[str, torch.Tensor]
    stored_dtypes: List[str]


class _Reader:
    def __init__(self, stream: BinaryIO, path: Path) -> None:
        self._stream = stream
        self._path = path

    def take(self, n: int) -> bytes:
        data = self._stream.read(n)
        if len(data) != n:
            raise ModelLoadError(f"{self._path} is truncated (wanted {n} more bytes at offset {self._stream.tell()})")
        return data

    def unpack(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0]

    def string(self) -> str:
        length = self.unpack("H")
        raw = self.take(length)
        if length == 0 or raw[-1] != 0:
            raise ModelLoadError(f"{self._path} is not a CTranslate2 model file (bad string at offset {self._stream.tell()})")
        return raw[:-1].decode("utf-8", errors="replace")


def _read_tensor(reader: _Reader, name: str) -> torch.Tensor:
    rank = reader.unpack("B")
    shape = [reader.unpack("I") for _ in range(rank)]
    type_id = reader.unpack("B")
    num_bytes = reader.unpack("I")
    if type_id not in _DTYPES:
        raise ModelLoadError(f"variable {name} has unknown dtype id {type_id}")
    dtype = _DTYPES[type_id]
    expected = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
    if num_bytes != expected:
        raise ModelLoadError(f"variable {name} declares {num_bytes} bytes, its shape {shape} needs {expected}")
    data = bytearray(reader.take(num_bytes))  # writable, so torch does not warn or alias a read-only buffer
    if num_bytes == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(data, dtype=dtype).reshape(shape)


def _dequantize(variables: Dict[str, torch.Tensor]) -> None:
    """Undo CTranslate2's weight quantization in place.

    int8 weights were scaled row by row (`q = round(w * scale[row])`, rows being
    output channels, also for conv kernels); int16 by one scalar. Dividing by the
    scale gives back the float weights up to rounding.
    """
    zero_points = [n for n in variables if n.endswith("_zero")]
    if zero_points:
        raise ModelLoadError(f"variable {zero_points[0]}: zero-point (AWQ) quantization is not supported")
    for scale_name in [n for n in variables if n.endswith("_scale")]:
        base = scale_name[: -len("_scale")]
        if base not in variables:
            continue
        weight, scale = variables[base].float(), variables.pop(scale_name).float()
        if scale.dim() == 0:
            variables[base] = weight / scale
        else:
            variables[base] = weight / scale.reshape(-1, *[1] * (weight.dim() - 1))
    for name, tensor in variables.items():
        if tensor.dtype == torch.bfloat16:
            variables[name] = tensor.float()  # numpy and older torch.save users have no bfloat16


def read_ctranslate2_model(model_bin: Path) -> CTranslate2Model:
    """Parse `model_bin`; raise ModelLoadError naming the problem if it is not a readable CTranslate2 file."""
    try:
        stream = open(model_bin, "rb")
    except OSError as exc:
        raise ModelLoadError(f"cannot open {model_bin}: {exc.strerror or exc}") from exc
    with stream:
        reader = _Reader(stream, model_bin)
        version = reader.unpack("I")
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise ModelLoadError(
                f"{model_bin}: CTranslate2 binary version {version} is not supported "
                f"(expected {', '.join(map(str, SUPPORTED_BINARY_VERSIONS))}); re-convert it with a current ctranslate2"
            )
        spec_name = reader.string()
        revision = reader.unpack("I")
        variables: Dict[str, torch.Tensor] = {}
        stored_dtypes: List[str] = []
        for _ in range(reader.unpack("I")):
            name = reader.string()
            tensor = _read_tensor(reader, name)
            variables[name] = tensor
            if tensor.dim() > 0:
                stored_dtypes.append(str(tensor.dtype).replace("torch.", ""))
        aliases = [(reader.string(), reader.string()) for _ in range(reader.unpack("I"))]
        if stream.read(1):
            raise ModelLoadError(f"{model_bin}: unexpected data after the last alias (not a CTranslate2 file?)")
    missing = [f"{alias} -> {target}" for alias, target in aliases if target not in variables]
    if missing:
        raise ModelLoadError(f"{model_bin}: alias points at a missing variable ({missing[0]})")
    # Aliases are resolved after dequantizing: an alias of a quantized weight has no scale of its own.
    _dequantize(variables)
    for alias, target in aliases:
        if target in variables:
            variables[alias] = variables[target]
    return CTranslate2Model(spec_name, revision, version, variables, sorted(set(stored_dtypes)))


def missing_data(model_bin: Path) -> Optional[str]:
    """Why `model_bin` is not a complete CTranslate2 file (None if it is), without reading the weights.

    Walks the variable table seeking past each tensor's bytes, so checking a joined
    multi-part download costs milliseconds: a missing part shows as a table that
    runs past the end of the file.
    """
    size = model_bin.stat().st_size
    with open(model_bin, "rb") as stream:
        reader = _Reader(stream, model_bin)
        try:
            reader.unpack("I")
            reader.string()
            reader.unpack("I")
            count = reader.unpack("I")
            for index in range(count):
                reader.string()
                rank = reader.unpack("B")
                reader.take(4 * rank + 1)
                num_bytes = reader.unpack("I")
                if stream.seek(num_bytes, 1) > size:
                    return f"it holds {index} of {count} variables ({size} bytes; more parts are needed)"
            for _ in range(reader.unpack("I")):
                reader.string()
                reader.string()
        except ModelLoadError:
            return f"it ends inside its variable table ({size} bytes; more parts are needed)"
        if stream.read(1):
            return "it has data after its last alias (parts joined in the wrong order?)"
    return None
