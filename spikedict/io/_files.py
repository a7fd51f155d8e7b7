"""Reading and writing recordings through neo.io.

Formats written and read by name (``format=``), or picked from the file extension:

===========  =============  ======================================  =======================
format       extensions     reader and writer                        needs
===========  =============  ======================================  =======================
``"mat"``    ``.mat``       ``NeoMatlabIO`` (MATLAB 5, compressed)   nothing (scipy)
``"nix"``    ``.nix``       ``NixIO``                                ``pip install 'spikedict[nix]'``
``"nwb"``    ``.nwb``       units and trials tables (pynwb)          ``pip install 'spikedict[nwb]'``
``"pickle"`` ``.pkl``       ``PickleIO``                             ``allow_pickle=True``
===========  =============  ======================================  =======================

NWB files with a ``units`` table (files from the field, e.g. DANDI, and files written here) are read by
:func:`spikedict.io.read_nwb`: one segment per trial of the ``trials`` table, one group per unit. NWB files
without one (or written by neo's ``NWBIO``) are read by ``NWBIO``. Writing NWB stores the units, the trials
(segments) with their annotations, and the Block's annotations (see :mod:`spikedict.io._nwb`).

Any other file that ``neo.io`` recognises by its extension (Plexon, Blackrock, Spike2, ...) can be read.
Pickle is refused unless asked for explicitly, because loading a pickle runs code from the file.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spikedict._atomic import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    import neo

__all__ = ["read_recording", "write_recording"]

# format -> (neo IO class name, file extensions, module it needs, extra that installs it)
FORMATS: dict[str, tuple[str, tuple[str, ...], str | None, str | None]] = {
    "mat": ("NeoMatlabIO", (".mat",), None, None),
    "nix": ("NixIO", (".nix", ".h5"), "nixio", "nix"),
    "nwb": ("NWBIO", (".nwb",), "pynwb", "nwb"),
    "pickle": ("PickleIO", (".pkl", ".pickle"), None, None),
}
_ALIASES = {"neomatlab": "mat", "matlab": "mat", "pkl": "pickle"}


def _resolve_format(path: Path, format: str | None) -> str | None:
    """The format key for ``path``, or None when neo should guess from the extension."""
    if format is not None:
        if not isinstance(format, str):
            raise TypeError(f"format must be a name such as 'mat' or 'nix' (a str) or None, got {format!r}.")
        key = _ALIASES.get(format.lower(), format.lower())
        if key not in FORMATS:
            raise ValueError(
                f"unknown format {format!r}; spikedict writes and reads {sorted(FORMATS)} by name, and reads the "
                "other formats neo.io knows from their file extension (leave format=None)."
            )
        return key
    suffix = path.suffix.lower()
    for key, (_, extensions, _, _) in FORMATS.items():
        if suffix in extensions:
            return key
    return None


def _io_class(key: str, allow_pickle: bool, path: Path) -> type:
    import neo.io

    class_name, _, module, extra = FORMATS[key]
    if key == "pickle" and not allow_pickle:
        raise ValueError(
            f"{str(path)!r} is a pickle file; loading a pickle runs code stored in the file, so spikedict refuses it "
            "by default. Pass allow_pickle=True only for files you created yourself, or use format='mat' or 'nix'."
        )
    if module is not None and importlib.util.find_spec(module) is None:
        raise ImportError(
            f"the {key.upper()} format needs the optional dependency {module!r}, which is not installed. Install it "
            f"with: pip install 'spikedict[{extra}]'"
        )
    return getattr(neo.io, class_name)


def read_recording(path: str | os.PathLike, format: str | None = None, *, allow_pickle: bool = False) -> neo.Block:
    """Read a recording into a ``neo.Block`` through ``neo.io``.

    Parameters
    ----------
    path : str or path-like
    format : {"mat", "nix", "nwb", "pickle"}, optional
        Default: from the file extension; other extensions are passed to ``neo.io.get_io``.
    allow_pickle : bool
        Pickle files run code when loaded; they are refused unless this is True.

    Returns
    -------
    neo.Block
        The first block of the file (segments = trials, groups = units). An NWB file with a ``units`` table is
        read by :func:`spikedict.io.read_nwb` with its defaults: trials aligned to their ``start_time`` (a file
        written by :func:`write_recording` comes back as the Block that was written); call ``read_nwb`` to
        align the trials to another column or to choose the window.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ImportError
        If the format needs an optional dependency that is missing (the message names the extra).
    TypeError
        If ``format`` is not a str.
    ValueError
        If neo cannot read the file, or would read it as a pickle without ``allow_pickle``.

    Examples
    --------
    >>> import tempfile, pathlib, neo, quantities as pq
    >>> block = neo.Block(name="demo")
    >>> block.segments.append(neo.Segment())
    >>> block.segments[0].spiketrains.append(neo.SpikeTrain([1.0, 2.0] * pq.s, t_stop=3 * pq.s))
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "demo.mat"
    >>> write_recording(block, path)
    >>> read_recording(path).segments[0].spiketrains[0].magnitude
    array([1., 2.])
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no recording at {str(path)!r}: the file does not exist. Check the path.")
    key = _resolve_format(path, format)
    if key is None:
        import neo.io

        try:
            candidates = neo.io.list_candidate_ios(str(path))
        except (ValueError, OSError):
            candidates = []
        if not candidates:
            raise ValueError(
                f"neo has no reader for {str(path)!r} (extension {path.suffix!r}). Pass format= one of "
                f"{sorted(FORMATS)}, or convert the file to a format neo reads (NIX, NWB, MAT)."
            )
        if any(candidate.__name__ == "PickleIO" for candidate in candidates) and not allow_pickle:
            raise ValueError(
                f"neo would read {str(path)!r} with PickleIO, and loading a pickle runs code stored in the file, so "
                "spikedict refuses it by default. Pass allow_pickle=True only for files you created yourself, or "
                "pass format= one of " + str(sorted(key for key in FORMATS if key != "pickle")) + "."
            )
        reader = None
        errors = []
        for candidate in candidates:
            try:
                reader = candidate(str(path))
                break
            except Exception as error:  # neo readers raise anything
                errors.append(f"{candidate.__name__}: {error}")
        if reader is None:
            raise ValueError(f"neo could not open {str(path)!r} ({'; '.join(errors)}).")
        return _read_block(reader, path)
    io_class = _io_class(key, allow_pickle, path)
    if key == "nwb":
        from spikedict.io._nwb import nwb_layout, read_nwb

        if nwb_layout(path) == "units":
            return read_nwb(path)
    if key == "nix":
        reader = _open(io_class, path, mode="ro")
    elif key == "nwb":
        reader = _open(io_class, path, mode="r")
    else:
        reader = _open(io_class, path)
    try:
        return _read_block(reader, path)
    finally:
        close = getattr(reader, "close", None)
        if callable(close):
            close()


def _open(io_class: type, path: Path, **kwargs: Any) -> Any:
    try:
        return io_class(str(path), **kwargs)
    except Exception as error:
        raise ValueError(
            f"neo ({io_class.__name__}) could not open {str(path)!r}: {type(error).__name__}: {error}. The file may "
            "be damaged or in another format; pass format= to choose the reader."
        ) from error


def _read_block(reader: Any, path: Path) -> neo.Block:
    try:
        block = reader.read_block()
    except Exception as error:
        raise ValueError(
            f"neo ({type(reader).__name__}) could not read {str(path)!r}: {type(error).__name__}: {error}. The file "
            "may be damaged, truncated, or in another format; pass format= to choose the reader."
        ) from error
    if block is None:
        raise ValueError(
            f"neo ({type(reader).__name__}) found no Block in {str(path)!r}; it is not a file written by neo "
            "(a MAT file needs a 'block' variable)."
        )
    return block


def write_recording(
    block: neo.Block, path: str | os.PathLike, format: str | None = None, *, allow_pickle: bool = False
) -> None:
    """Write a ``neo.Block`` to a file, atomically (a temporary file next to it, then a rename).

    An existing file at ``path`` is replaced only once the new one is complete.

    Parameters
    ----------
    block : neo.Block
    path : str or path-like
    format : {"mat", "nix", "nwb", "pickle"}, optional
        Default: from the extension. ``"mat"`` (NeoMatlabIO, compressed) needs no optional dependency and keeps
        annotations, groups and units. ``"nwb"`` writes a ``units`` table (one row per unit) and a ``trials``
        table (one row per segment, a column per scalar segment annotation) that other NWB tools read, and keeps
        the annotations for :func:`read_recording` (see :func:`spikedict.io._nwb.write_nwb_file`; spike
        waveforms and image sequences are not written).
    allow_pickle : bool
        Writing pickle must be asked for explicitly (reading it back runs code).
    """
    import neo

    if not isinstance(block, neo.Block):
        raise TypeError(f"write_recording writes a neo.Block, got {type(block).__name__}; wrap segments in a Block.")
    path = Path(path)
    key = _resolve_format(path, format)
    if key is None:
        raise ValueError(
            f"cannot tell the format of {str(path)!r} from its extension {path.suffix!r}; use one of "
            f"{[e for _, ext, _, _ in FORMATS.values() for e in ext]} or pass format= one of {sorted(FORMATS)}."
        )
    io_class = _io_class(key, allow_pickle, path)
    if not path.parent.exists():
        raise FileNotFoundError(f"the folder {str(path.parent)!r} does not exist; create it first.")
    with atomic_path(path) as temporary:
        if key == "mat":
            io_class(str(temporary)).write_block(block, do_compression=True)
        elif key == "nix":
            writer = io_class(str(temporary), mode="ow")
            try:
                writer.write_block(block)
            finally:
                writer.close()
        elif key == "nwb":
            from spikedict.io._nwb import write_nwb_file

            write_nwb_file(block, temporary)
        else:
            io_class(str(temporary)).write_block(block)
