"""Check the built sdist and wheel: their metadata and what they hold.

    python .ci/check_dist.py DIST_DIR

The wheel must hold the package (every module of src/coreset_sampler, py.typed) and nothing
else at its top level; its metadata must name the project, the version of the source, the
required dependencies of pyproject.toml and the README as the long description. The sdist must
hold the sources, pyproject.toml, the licence and the README.
"""

from __future__ import annotations

import email
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fail(message: str) -> None:
    print(f"check_dist: {message}", file=sys.stderr)
    raise SystemExit(1)


def main(dist: Path) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        fail(f"expected one wheel and one sdist in {dist}, found {wheels + sdists}")
    with zipfile.ZipFile(wheels[0]) as whl:
        names = whl.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(whl.read(meta_name))
    if meta["Name"] != project["name"] or meta["Version"] != project["version"]:
        fail(f"wheel metadata says {meta['Name']} {meta['Version']}")
    if meta["Requires-Python"] != project["requires-python"]:
        fail(f"Requires-Python is {meta['Requires-Python']}")
    required = {r.replace(" ", "") for r in meta.get_all("Requires-Dist", []) if "extra" not in r}
    if required != {r.replace(" ", "") for r in project["dependencies"]}:
        fail(f"required dependencies are {sorted(required)}")
    extras = set(meta.get_all("Provides-Extra", []))
    if extras != set(project["optional-dependencies"]):
        fail(f"extras are {sorted(extras)}")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    body = meta.get_payload(decode=True).decode("utf-8")
    if meta["Description-Content-Type"] != "text/markdown" or body.strip() != readme.strip():
        fail("the long description is not the README (markdown)")
    if meta["License-Expression"] != project["license"]:
        fail(f"License-Expression is {meta['License-Expression']}")
    top = {n.split("/")[0] for n in names}
    if top - {"coreset_sampler"} != {meta_name.split("/")[0]}:
        fail(f"the wheel holds more than the package at its top level: {sorted(top)}")
    sources = {
        "coreset_sampler/" + str(p.relative_to(ROOT / "src" / "coreset_sampler"))
        for p in (ROOT / "src" / "coreset_sampler").rglob("*")
        if p.suffix == ".py" or p.name == "py.typed"
    }
    missing = sources - set(names)
    if missing:
        fail(f"the wheel lacks {sorted(missing)}")
    with tarfile.open(sdists[0]) as tar:
        held = {"/".join(m.name.split("/")[1:]) for m in tar.getmembers()}
    for needed in ("pyproject.toml", "README.md", "LICENSE", "src/coreset_sampler/__init__.py"):
        if needed not in held:
            fail(f"the sdist lacks {needed}")
    print(
        f"check_dist: {wheels[0].name} ({len(names)} files) and {sdists[0].name} ({len(held)} "
        f"entries): metadata and contents as expected"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
