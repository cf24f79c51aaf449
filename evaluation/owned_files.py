"""Which files in an output folder wg2 may replace: only those it can prove it wrote there. Each command that
writes a fixed set of names into a folder the user chose (`wg2 compare --out`, `wg2 bench --out`) records them in
the folder's manifest `.wg2-written` (one name a line); a name it would replace that exists but is not in the
manifest is the user's, and the command refuses to run (unless forced). Pure: no MLflow, no torch.
"""
from __future__ import annotations

import os
from pathlib import Path

MANIFEST = ".wg2-written"


def written(folder: Path) -> set[str]:
    """The names the manifest of `folder` lists (none when it has no manifest)."""
    try:
        text = (Path(folder) / MANIFEST).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return set()
    return {line.strip() for line in text.splitlines() if line.strip()}


def foreign(folder: Path, names: tuple[str, ...] | list[str]) -> list[Path]:
    """Those of `names` that exist in `folder` and that wg2 did not write (not in its manifest)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    ours = written(folder)
    return [folder / n for n in names if n not in ours and (os.path.lexists(folder / n))]


def record(folder: Path, names: list[str] | tuple[str, ...]) -> None:
    """Add `names` to the manifest of `folder` (written whole through a temporary, then renamed)."""
    folder = Path(folder)
    lines = sorted(written(folder) | set(names))
    tmp = folder / f"{MANIFEST}.tmp{os.getpid()}"
    try:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, folder / MANIFEST)
    finally:
        tmp.unlink(missing_ok=True)


def not_an_output_folder(folder: Path) -> str | None:
    """Why `folder` cannot be a command's own output folder (the home folder, a filesystem root), or None."""
    here = Path(os.path.abspath(Path(folder).expanduser()))
    if here == Path(os.path.abspath(Path.home())):
        return "it is the home folder"
    if here == here.parent:
        return "it is a filesystem root"
    return None


def refusal(folder: Path, names: tuple[str, ...] | list[str], option: str, force: bool = False) -> str | None:
    """The message refusing `folder` as the output folder of `option`, or None when it may be written: never the
    home folder or a root; no foreign file among `names` unless `force`."""
    why = not_an_output_folder(folder)
    if why:
        return f"{option} {folder}: {why}; give a folder of its own for the output"
    if force:
        return None
    theirs = foreign(folder, names)
    if theirs:
        shown = ", ".join(str(p) for p in theirs[:5]) + (f" and {len(theirs) - 5} more" if len(theirs) > 5 else "")
        return (f"{option} {folder}: it holds {shown}, which wg2 did not write there (not in its {MANIFEST}) and "
                "would replace; choose another folder, move them away, or add --force to replace them")
    return None
