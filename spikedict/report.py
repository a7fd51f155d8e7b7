"""Output folders and self-contained HTML reports, shared by ``spikedict demo`` and ``spikedict fit``.

A :class:`Report` collects sections (text, tables, figures, settings, timings) and writes one HTML file with
every figure embedded as a base64 PNG, so the report can be mailed or archived on its own. Each figure is also
written as a PNG file and an SVG file (vector, text kept as text: editable for a paper) and each table as a CSV
file next to the report; every file is written atomically (a temporary file, then a rename).

Examples
--------
>>> import pandas as pd, tempfile, pathlib
>>> folder = prepare_output_directory(pathlib.Path(tempfile.mkdtemp()) / "out")
>>> report = Report("A study", folder)
>>> csv = report.add_table("errors", pd.DataFrame({"template": [0, 1], "error": [0.05, 0.1]}), "Template errors")
>>> path = report.write()
>>> path.name, "<table" in path.read_text(), (folder / "errors.csv").exists()
('report.html', True, True)
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from spikedict._atomic import atomic_path, write_bytes_atomic, write_text_atomic

__all__ = ["OutputExistsError", "Report", "figure_images", "prepare_output_directory", "versions"]

# Packages whose versions every report lists (the ones that decide what the numbers are).
REPORTED_PACKAGES = ("spikedict", "torch", "numpy", "scipy", "neo", "elephant", "quantities", "pandas", "matplotlib")


class OutputExistsError(FileExistsError):
    """Raised when an output folder already holds files and overwriting was not asked for."""


def versions() -> dict[str, str]:
    """Versions of Python and of the packages that produce the results (``"not installed"`` when missing).

    Examples
    --------
    >>> "torch" in versions() and "python" in versions()
    True
    """
    found = {"python": platform.python_version()}
    for name in REPORTED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def prepare_output_directory(path: str | os.PathLike, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Create the output folder ``path``, refusing to write into a non-empty one unless asked to.

    Parameters
    ----------
    path : str or path-like
    overwrite : bool
        Write into an existing non-empty folder (files of the same name are replaced, others are left alone).
    resume : bool
        The folder holds an interrupted run that is continued: it may be non-empty.

    Returns
    -------
    Path

    Raises
    ------
    OutputExistsError
        ``path`` is a non-empty folder and neither ``overwrite`` nor ``resume`` is set.
    NotADirectoryError
        ``path`` exists and is a file.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"the output path {str(path)!r} is a file, not a folder; choose another --out.")
    if path.is_dir() and any(path.iterdir()) and not (overwrite or resume):
        raise OutputExistsError(
            f"the output folder {str(path)!r} already exists and is not empty; choose another --out, or pass "
            "--overwrite to write into it (files of the same name are replaced)."
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_if_empty(path: str | os.PathLike) -> None:
    """Remove the folder ``path`` if it exists and holds nothing (what a command that failed before writing
    anything leaves behind)."""
    path = Path(path)
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def figure_png(figure: Any, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed afterwards."""
    return figure_images(figure, dpi, formats=("png",))["png"]


def figure_images(figure: Any, dpi: int = 110, formats: tuple[str, ...] = ("png", "svg")) -> dict[str, bytes]:
    """A matplotlib figure as bytes in each of ``formats``; the figure is closed afterwards (even on an error).

    SVG keeps text as text (``svg.fonttype = "none"``) and carries no date, so the same figure gives the same file.

    Parameters
    ----------
    figure : matplotlib.figure.Figure
    dpi : int
        Resolution of raster formats (PNG).
    formats : tuple of str
        matplotlib format names.

    Returns
    -------
    dict of str to bytes
        The file's bytes per format.
    """
    import matplotlib as mpl
    import matplotlib.pyplot as plt  # only to release the figure from pyplot's registry

    images = {}
    try:
        with mpl.rc_context({"svg.fonttype": "none", "svg.hashsalt": "spikedict"}):
            for name in formats:
                buffer = io.BytesIO()
                metadata = {"Date": None} if name == "svg" else None
                figure.savefig(buffer, format=name, dpi=dpi, bbox_inches="tight", metadata=metadata)
                images[name] = buffer.getvalue()
    finally:
        plt.close(figure)
    return images


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


@dataclass
class Report:
    """An HTML report written to ``folder/report.html``, with its figures (PNG and SVG) and tables (CSV) beside it.

    Parameters
    ----------
    title : str
    folder : path
        Output folder (see :func:`prepare_output_directory`).
    """

    title: str
    folder: Path
    sections: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)

    def add_text(self, heading: str | None, text: str) -> None:
        """A paragraph (plain text, escaped), with an optional heading."""
        block = f"<h2>{html.escape(heading)}</h2>\n" if heading else ""
        paragraphs = "".join(f"<p>{html.escape(part)}</p>\n" for part in text.split("\n\n") if part.strip())
        self.sections.append(block + paragraphs)

    def add_table(
        self, name: str, table: pd.DataFrame, heading: str, caption: str = "", *, float_format: str = "{:.4g}"
    ) -> Path:
        """A table, shown in the report and written to ``folder/name.csv`` (full precision).

        Returns
        -------
        Path
            The CSV file.
        """
        path = self.folder / f"{name}.csv"
        with atomic_path(path) as temporary:
            table.to_csv(temporary, index=False)
        self.files.append(path)
        shown = table.to_html(
            index=False,
            border=0,
            classes="table",
            float_format=lambda v: float_format.format(v),
            na_rep="",
        )
        text = f"<p class='caption'>{html.escape(caption)}</p>\n" if caption else ""
        link = f"<p class='file'>CSV: <a href='{html.escape(path.name)}'>{html.escape(path.name)}</a></p>"
        self.sections.append(f"<h2>{html.escape(heading)}</h2>\n{text}{shown}\n{link}\n")
        return path

    def add_figure(self, name: str, figure: Any, heading: str, caption: str = "") -> Path:
        """A matplotlib figure, embedded as a base64 PNG and written to ``folder/name.png`` and ``folder/name.svg``.

        The figure is closed afterwards; both files are listed in ``files`` and linked under the figure.

        Returns
        -------
        Path
            The PNG file (the SVG file is beside it, ``path.with_suffix(".svg")``).
        """
        images = figure_images(figure)
        path = self.folder / f"{name}.png"
        vector = self.folder / f"{name}.svg"
        write_bytes_atomic(path, images["png"])
        write_bytes_atomic(vector, images["svg"])
        self.files.extend([path, vector])
        encoded = base64.b64encode(images["png"]).decode("ascii")
        text = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        links = " · ".join(f"<a href='{html.escape(p.name)}'>{html.escape(p.name)}</a>" for p in (path, vector))
        self.sections.append(
            f"<h2>{html.escape(heading)}</h2>\n<figure><img alt='{html.escape(heading)}' "
            f"src='data:image/png;base64,{encoded}'/>{text}</figure>\n<p class='file'>Files: {links}</p>\n"
        )
        return path

    def add_mapping(self, heading: str, values: Mapping[str, Any], caption: str = "") -> None:
        """A two-column table of names and values (settings, versions, timings)."""
        rows = "".join(
            f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(_format_value(value))}</td></tr>"
            for key, value in values.items()
        )
        text = f"<p class='caption'>{html.escape(caption)}</p>\n" if caption else ""
        self.sections.append(f"<h2>{html.escape(heading)}</h2>\n{text}<table class='table mapping'>{rows}</table>\n")

    def add_file_list(self, heading: str = "Files") -> None:
        """The files written next to the report so far, with links."""
        items = "".join(
            f"<li><a href='{html.escape(path.name)}'>{html.escape(path.name)}</a></li>" for path in sorted(self.files)
        )
        self.sections.append(f"<h2>{html.escape(heading)}</h2>\n<ul>{items}</ul>\n")

    def to_html(self) -> str:
        """The whole report as one HTML document (versions appended at the end)."""
        created = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        version_rows = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in versions().items()
        )
        body = "\n".join(self.sections)
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(self.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }}
table.table {{ border-collapse: collapse; font-size: 0.9em; }}
table.table th, table.table td {{ padding: 0.2em 0.8em; border-bottom: 1px solid #eee; text-align: right; }}
table.mapping th {{ text-align: left; font-weight: normal; color: #555; }}
table.mapping td {{ text-align: left; font-family: monospace; }}
figure {{ margin: 0; }} img {{ max-width: 100%; }}
.caption, figcaption, .file, .meta {{ color: #555; font-size: 0.9em; }}
</style>
</head>
<body>
<h1>{html.escape(self.title)}</h1>
<p class="meta">Written {html.escape(created)} on {html.escape(platform.node() or "this machine")}
({html.escape(platform.platform())}).</p>
{body}
<h2>Versions</h2>
<table class="table mapping">{version_rows}</table>
</body>
</html>
"""

    def write(self, name: str = "report.html") -> Path:
        """Write the report to ``folder/name`` (atomically) and return its path."""
        return write_text_atomic(self.folder / name, self.to_html())
