"""User model files: `--model path/to/file.pth|.ckpt|.safetensors|.pt|.ts`.

Safety first: a file is never unpickled with arbitrary globals. `.safetensors` is read by
safetensors; `.pth/.ckpt` (and a `.pt` that is not TorchScript) by
`torch.load(weights_only=True)`, which only rebuilds tensors and plain containers — any
other pickled object is refused with `UnsafeModelFile`. The state dict then goes to
spandrel, which recognises the architecture and reads the scale from it.

TorchScript (`.ts`, or a `.pt` zip with a `code/` folder) is a program, not only weights: its
`forward` runs with the user's rights and can read and write files (`torch.from_file`, seen
overwriting a file as the model was probed). It is loaded only where the caller says the file
is trusted (`--trust-model`; never by the service), by `torch.jit.load`, whose restricted
unpickler only rebuilds TorchScript classes; its scale and dtype support are found by running
it once on a small CPU tensor at load time.
"""

from __future__ import annotations

import copy
import io
import logging
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.choices import MODEL_FILE_SUFFIXES
from core.errors import CodeModelRefused, ModelError, UnsafeModelFile, one_line
from core.files import describe_file_kind

from .base import LoadedModel

__all__ = ["load_user_model"]

logger = logging.getLogger(__name__)

_PROBE_SIZE = 32  # side of the CPU probe tensor for TorchScript models


def load_user_model(path: Path, *, scale: int | None = None, trust_code: bool = False) -> LoadedModel:
    """Load a user model file; raise `ModelError`/`UnsafeModelFile` with one clear line.
    `trust_code`: run a TorchScript model (a program) too; without it such a file is refused."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(
            f"Model file {str(path)!r} does not exist. Give an existing .pth, .safetensors, "
            ".pt or .ts file, or a built-in name (see --list-models)."
        )
    if not path.is_file():  # a FIFO would block the read, a device never end it
        raise ModelError(
            f"--model {str(path)!r} is {describe_file_kind(path.stat().st_mode)}, not a model file. Give a .pth, "
            ".safetensors, .pt or .ts file."
        )
    suffix = path.suffix.lower()
    if suffix not in MODEL_FILE_SUFFIXES:
        raise ModelError(
            f"Model file {path.name!r} has an unsupported type {suffix or '(none)'!r}: allowed "
            f"are {', '.join(MODEL_FILE_SUFFIXES)}. Convert it to .safetensors or TorchScript."
        )
    if suffix == ".ts" or (suffix == ".pt" and _is_torchscript(path)):
        if not trust_code:
            raise CodeModelRefused(
                f"Model file {path.name!r} is TorchScript: a program, not only weights, and it runs with your rights "
                "(it can read and write your files). Pass --trust-model to run it, only for a file whose author you "
                "trust; weights (.safetensors, .pth) need no trust."
            )
        return _load_torchscript(path, scale=scale)
    if suffix == ".safetensors":
        state = _load_safetensors(path)
    else:
        state = _load_pickle_weights_only(path)
    return _load_spandrel(path, state, scale=scale)


# --- weights files -------------------------------------------------------------------


def _load_safetensors(path: Path) -> Mapping:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise ModelError(
            f"Model file {path.name!r} is not a readable safetensors file ({_first_line(exc)}): "
            "it is corrupt or truncated. Download or export it again."
        ) from exc


def _load_pickle_weights_only(path: Path) -> Mapping:
    """`torch.load(weights_only=True)`, with errors that say what the file is.

    When torch refuses a file, its pickle is read as opcodes (`pickletools`, which parses
    and never executes) to tell the cases apart: a pickle that asks for code (a global
    outside torch's and the standard containers') is refused as unsafe, naming that
    global; a file whose bytes are not a pickle at all is damaged or truncated. torch's
    own text is never shown: it advises `weights_only=False`, which is exactly what must
    not be done with a file from an unknown source.
    """
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: not the user's concern
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - classified below, never re-raised with torch's advice
        pass
    unsafe, damaged = _scan_pickle(path)
    if unsafe:
        raise UnsafeModelFile(
            f"Refusing to load {path.name!r}: torch.load(weights_only=True) refuses it because it asks for code "
            f"({', '.join(unsafe[:3])}), which could run on loading. framepipe never unpickles such files; if you "
            "trust it, convert it to .safetensors (safetensors.torch.save_file(state_dict, ...)) and pass that."
        )
    what = "is not a pickle at all" if damaged else "is in a form torch.load(weights_only=True) does not read"
    raise ModelError(
        f"Model file {path.name!r} cannot be read as PyTorch weights: it is corrupt or truncated, or another kind of "
        f"file (its data {what}). Download or export it again, or convert it to .safetensors."
    )


# Globals a weights file may name: torch's own rebuild functions and storages, and the
# containers state dicts are made of. Anything else is code the pickle wants to run.
_SAFE_GLOBAL_MODULES = ("torch", "collections", "_codecs", "numpy.core.multiarray", "numpy", "builtins")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,100}$")
_UNSAFE_BUILTINS = {"eval", "exec", "compile", "open", "getattr", "setattr", "__import__", "input", "breakpoint"}


def _scan_pickle(path: Path) -> tuple[list[str], bool]:
    """(globals a pickle in `path` asks for that are not plain data, whether its bytes are damaged).

    Reads `data.pkl` of a torch.save archive, else the file itself; parses its opcodes
    with `pickletools.genops` (nothing is executed)."""
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                if not names:
                    return [], True
                data = archive.read(names[0])
        else:
            with open(path, "rb") as f:
                data = f.read(64 << 20)  # a pickle's opcodes that matter come first; never read GBs
    except (OSError, zipfile.BadZipFile):
        return [], True
    unsafe: list[str] = []
    strings: list[str] = []
    try:
        for opcode, arg, _pos in pickletools.genops(data):
            name = opcode.name
            if isinstance(arg, str) and name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                strings = (strings + [arg])[-2:]
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
            elif name == "STACK_GLOBAL" and len(strings) == 2:
                module, attr = strings
            elif name == "STACK_GLOBAL":
                module, attr = "?", "?"
            else:
                continue
            if not _safe_global(module, attr) and _IDENTIFIER.match(module) and _IDENTIFIER.match(attr):
                unsafe.append(f"{module}.{attr}")  # (random bytes can look like a GLOBAL opcode, not like names)
    except Exception:  # noqa: BLE001 - any parse failure: not a (complete) pickle
        return unsafe, not unsafe
    return unsafe, False


def _safe_global(module: str, attr: str) -> bool:
    if module == "builtins" or module == "__builtin__":
        return attr not in _UNSAFE_BUILTINS and attr in {"set", "frozenset", "slice", "tuple", "list", "dict",
                                                         "bytearray", "complex", "int", "float", "bool", "str"}
    return any(module == m or module.startswith(m + ".") for m in _SAFE_GLOBAL_MODULES if m != "builtins")


def _first_line(exc: BaseException) -> str:
    return one_line(exc, limit=200)


def _load_spandrel(path: Path, state: object, *, scale: int | None) -> LoadedModel:
    from spandrel import (
        ImageModelDescriptor,
        ModelLoader,
        UnsupportedModelError,
        canonicalize_state_dict,
    )

    if not isinstance(state, Mapping):
        raise ModelError(
            f"Model file {path.name!r} holds a {type(state).__name__}, not a state dict "
            "(a mapping of names to tensors). Save model.state_dict() instead."
        )
    state = canonicalize_state_dict(dict(state))
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(
            f"Model file {path.name!r} is not a state dict of tensors. Save "
            "model.state_dict() (or use safetensors.torch.save_file)."
        )
    try:
        descriptor = ModelLoader(device="cpu").load_from_state_dict(state)
    except UnsupportedModelError:
        raise ModelError(
            f"Model file {path.name!r}: spandrel does not recognise its architecture "
            f"({len(state)} tensors, first key {next(iter(state))!r}). Use a model of an "
            "architecture spandrel supports, or export it to TorchScript (.ts)."
        ) from None
    except Exception as exc:  # noqa: BLE001 - an arch matched but its weights do not fit
        raise ModelError(
            f"Model file {path.name!r} looks like a known architecture but its weights do not "
            f"fit ({type(exc).__name__}: {_first_line(exc)}). The file is likely incomplete "
            "or modified; export it again."
        ) from exc
    arch = descriptor.architecture.name
    if not isinstance(descriptor, ImageModelDescriptor):
        raise ModelError(
            f"Model file {path.name!r} is a {arch} {descriptor.purpose} model, which needs "
            "more than one image input; framepipe runs single-image models only."
        )
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise ModelError(
            f"Model file {path.name!r} ({arch}) maps {descriptor.input_channels} channel(s) "
            f"to {descriptor.output_channels}; framepipe needs an RGB (3 to 3 channel) model."
        )
    native = descriptor.scale
    if scale is not None and scale != native:
        raise ModelError(
            f"Invalid --scale ({scale!r}) for {path.name!r}: this {arch} model produces "
            f"scale {native} only. Use --scale {native} or leave --scale out."
        )
    descriptor.model.eval().requires_grad_(False)
    template = _SpandrelModule(
        descriptor.model,
        scale=native,
        requirements=descriptor.size_requirements,
        call_fn=getattr(descriptor, "_call_fn", None),
    )
    dtypes = {torch.float32}
    if descriptor.supports_half:
        dtypes.add(torch.float16)
    if descriptor.supports_bfloat16:
        dtypes.add(torch.bfloat16)
    return LoadedModel(
        name=path.name,
        arch=arch,
        scale=native,
        num_params=sum(p.numel() for p in descriptor.model.parameters()),
        source=str(path),
        dtypes=frozenset(dtypes),
        make_module=lambda: copy.deepcopy(template),
    )


class _SpandrelModule(nn.Module):
    """A spandrel model with its size requirements met by padding (reflect, then
    replicate, as spandrel does) and the padding cropped off the output; not clamped."""

    def __init__(
        self,
        model: nn.Module,
        *,
        scale: int,
        requirements,
        call_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None,
    ) -> None:
        super().__init__()
        self.model = model
        self.scale = scale
        self.requirements = requirements
        self.call_fn = call_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        padded = pad_to_requirements(self.requirements, x)
        y = self.call_fn(self.model, padded) if self.call_fn is not None else self.model(padded)
        if padded is not x:
            y = y[..., : height * self.scale, : width * self.scale]
        return y


def pad_to_requirements(requirements, x: torch.Tensor) -> torch.Tensor:
    """`x` padded at the right and bottom to the size spandrel's `requirements` ask for
    (reflected, then repeated where the frame is smaller than the padding); `x` itself when
    none is needed."""
    height, width = x.shape[-2:]
    pad_w, pad_h = requirements.get_padding(width, height)
    if pad_w or pad_h:
        reflect_w, reflect_h = min(pad_w, width - 1), min(pad_h, height - 1)
        x = F.pad(x, (0, reflect_w, 0, reflect_h), mode="reflect")
        x = F.pad(x, (0, pad_w - reflect_w, 0, pad_h - reflect_h), mode="replicate")
    return x


# --- TorchScript ---------------------------------------------------------------------


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip with `<root>/code/` and `<root>/constants.pkl`
    (a `torch.save` zip has neither)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    has_code = any("/code/" in name for name in names)
    has_constants = any(name.endswith("/constants.pkl") for name in names)
    return has_code and has_constants


def _load_torchscript(path: Path, *, scale: int | None) -> LoadedModel:
    if not _is_torchscript(path):
        raise ModelError(
            f"Model file {path.name!r} is not a TorchScript archive (a zip holding code/ and "
            "constants.pkl). Export it with torch.jit.script(model).save(...) or "
            "torch.jit.trace, or pass weights as .pth/.safetensors."
        )
    data = path.read_bytes()

    def make_module() -> nn.Module:
        with warnings.catch_warnings():  # torch 2.10+ calls torch.jit deprecated: not the user's problem
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(io.BytesIO(data), map_location="cpu")

    try:
        module = make_module()
    except Exception as exc:  # noqa: BLE001 - torch.jit raises RuntimeError and others
        raise ModelError(
            f"TorchScript file {path.name!r} cannot be loaded ({_first_line(exc)}): it is "
            "corrupt or needs operators this torch lacks. Export it again."
        ) from exc
    module.eval()
    native = _probe_scale(path, module)
    if scale is not None and scale != native:
        raise ModelError(
            f"Invalid --scale ({scale!r}) for {path.name!r}: this TorchScript model produces "
            f"scale {native} only. Use --scale {native} or leave --scale out."
        )
    dtypes = {torch.float32}
    if _probe_dtype(make_module, torch.bfloat16):
        # A graph that runs in bf16 has no fp32-only constants; fp16 follows on GPUs.
        dtypes |= {torch.bfloat16, torch.float16}
    return LoadedModel(
        name=path.name,
        arch="TorchScript",
        scale=native,
        num_params=sum(p.numel() for p in module.parameters()),
        source=str(path),
        dtypes=frozenset(dtypes),
        make_module=make_module,
    )


def _probe_scale(path: Path, module: nn.Module) -> int:
    x = torch.rand(1, 3, _PROBE_SIZE, _PROBE_SIZE)
    try:
        with torch.inference_mode():
            y = module(x)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's code
        raise ModelError(
            f"TorchScript file {path.name!r} fails on a 1x3x{_PROBE_SIZE}x{_PROBE_SIZE} RGB "
            f"float tensor ({_first_line(exc)}). framepipe needs forward(x: (N,3,H,W)) -> "
            "(N,3,H*s,W*s)."
        ) from exc
    shape = tuple(y.shape) if isinstance(y, torch.Tensor) else None
    if (
        shape is None
        or len(shape) != 4
        or shape[:2] != (1, 3)
        or shape[2] != shape[3]
        or shape[2] % _PROBE_SIZE
    ):
        raise ModelError(
            f"TorchScript file {path.name!r} maps a 1x3x{_PROBE_SIZE}x{_PROBE_SIZE} tensor to "
            f"{shape or type(y).__name__}, not 1x3x{_PROBE_SIZE}s x{_PROBE_SIZE}s for an "
            "integer scale s. framepipe needs forward(x: (N,3,H,W)) -> (N,3,H*s,W*s)."
        )
    return shape[2] // _PROBE_SIZE


def _probe_dtype(make_module: Callable[[], nn.Module], dtype: torch.dtype) -> bool:
    try:
        probe = make_module().to(dtype).eval()
        with torch.inference_mode():
            y = probe(torch.rand(1, 3, 8, 8, dtype=dtype))
        return isinstance(y, torch.Tensor) and y.dtype == dtype
    except Exception:  # noqa: BLE001 - unsupported dtype: fp32 only
        logger.info("TorchScript model does not run in %s; fp32 only", dtype)
        return False
