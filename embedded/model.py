"""Where the embedded model comes from, and whether the engine is installed.

A packaged model is a GGUF file inside a PyPI package (found without
importing the package), or, when PyPI's file size limit split it, chunk
packages and an assembler: then it is assembled once into fognode's data
dir, atomically (a half-written file from an interrupted first start is
never taken for the model), and its SHA-256 is checked that once; later
starts compare the size and time recorded then, so they cost a stat, not a
hash of 240 MB. Everything here touches the disk: call it off the loop.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from pathlib import Path

from .options import PACKAGED_MODELS, EmbeddedOptions, PackagedModel

# What the engine process imports: llama.cpp's server, prebuilt (xllamacpp).
ENGINE_MODULE = "xllamacpp"
TEMPLATES = Path(__file__).parent / "templates"

INSTALL_HINT = (
    "./setup.sh installs it (xllamacpp, a prebuilt wheel, and the packaged models; "
    "--no-embedded skips them)"
)


class ModelUnavailable(Exception):
    """The embedded model cannot run here; the message says why and what to do."""


def runtime_missing() -> str | None:
    """None if llama.cpp's server can run here, else what is missing."""
    if importlib.util.find_spec(ENGINE_MODULE) is None:
        return "xllamacpp (llama.cpp's server) is not installed"
    return None


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)  # does not run the package's code
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def check_available(options: EmbeddedOptions) -> None:
    """Raise ModelUnavailable unless the engine and the model are there (cheap)."""
    missing = runtime_missing()
    packaged = options.packaged
    if missing is None and packaged is not None and _package_dir(packaged.module) is None:
        missing = f"the {packaged.name} model package ({packaged.requirement}) is not installed"
    if missing is not None:
        raise ModelUnavailable(f"The embedded model cannot run: {missing}; {INSTALL_HINT}.")
    if packaged is None and not Path(options.model).is_file():
        names = ", ".join(PACKAGED_MODELS)
        raise ModelUnavailable(
            f"The embedded model {options.model!r} is neither a GGUF file nor one of the "
            f"packaged models ({names})."
        )


def model_file(options: EmbeddedOptions) -> Path:
    """The GGUF file to run (a packaged one is assembled first if it must be)."""
    check_available(options)
    packaged = options.packaged
    if packaged is None:
        return Path(options.model)
    if packaged.assembled:
        return assemble(packaged, options.models_dir)
    directory = _package_dir(packaged.module)
    assert directory is not None  # checked above
    path = directory / packaged.file
    if not path.is_file():
        raise ModelUnavailable(f"The package {packaged.requirement} lacks {path}; reinstall it.")
    return path


def chat_template(options: EmbeddedOptions) -> str | None:
    """The Jinja chat template to use instead of the model file's, if any: the
    operator's (its text, or a file that holds it), else the one fognode
    ships for a packaged model whose file has none."""
    given = options.chat_template
    if given:
        if "{" not in given and "\n" not in given:
            path = Path(given).expanduser()
            try:
                return path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ModelUnavailable(
                    f"The chat template file {path} cannot be read ({exc.strerror or exc})."
                ) from None
        return given
    packaged = options.packaged
    if packaged is not None and packaged.chat_template is not None:
        return (TEMPLATES / packaged.chat_template).read_text(encoding="utf-8")
    return None


def assemble(packaged: PackagedModel, models_dir: Path) -> Path:
    target = models_dir / packaged.file
    stamp = target.with_name(target.name + ".verified")
    if target.is_file() and stamp.is_file():
        try:
            recorded = json.loads(stamp.read_text())
        except (OSError, ValueError):
            recorded = None
        if recorded == _identity(target):
            return target
    assembler = importlib.import_module(packaged.module)
    models_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        # The assembler checks the SHA-256 of what it wrote.
        assembler.assemble(partial, overwrite=True)
        os.replace(partial, target)
    except (OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        raise ModelUnavailable(
            f"Could not assemble the packaged model into {target}: {exc}"
        ) from exc
    stamp.write_text(json.dumps(_identity(target)))
    return target


def _identity(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
